"""The dashboard's websocket (portal/consumers.py) through the real ASGI
application: who may connect, the snapshot, and rows written after it
(as other processes write them) arriving as updates."""

import time
import uuid

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.utils import timezone

from dicomnodes.models import AssociationLog, AssociationResult, Peer, TransferJob, TransferState
from pacs_site import events
from pacs_site.models import Event, EventKind
from publishing.models import BurnJob, JobState
from tests.support.dashboard import dashboard_socket, receive_items, session_cookie
from worklist.models import HL7Message, MessageOutcome


@pytest.fixture
def staff_cookie(transactional_db, django_user_model):
    return session_cookie(django_user_model.objects.create_user("staff", is_staff=True))


@pytest.fixture
def clerk_cookie(transactional_db, django_user_model):
    return session_cookie(django_user_model.objects.create_user("clerk"))


def run(scenario):
    return async_to_sync(scenario)()


def test_an_anonymous_visitor_is_refused(transactional_db):
    async def scenario():
        socket = dashboard_socket()
        connected, _ = await socket.connect()
        return connected

    assert run(scenario) is False


def test_a_user_who_is_not_staff_is_refused(clerk_cookie):
    async def scenario():
        connected, _ = await dashboard_socket(clerk_cookie).connect()
        return connected

    assert run(scenario) is False


def test_a_page_of_another_site_is_refused_even_with_a_staff_session(staff_cookie):
    async def scenario():
        connected, _ = await dashboard_socket(staff_cookie, origin="http://evil.example").connect()
        return connected

    assert run(scenario) is False


def test_staff_get_the_recent_events_then_new_ones_as_they_are_recorded(staff_cookie):
    events.record(EventKind.STUDY_RECEIVED, "Study 20261101 CT received from CT1", study_instance_uid="1.2.1")

    async def scenario():
        socket = dashboard_socket(staff_cookie)
        connected, _ = await socket.connect()
        assert connected
        snapshot = await socket.receive_json_from(timeout=5)
        started = time.monotonic()
        await sync_to_async(events.record)(
            EventKind.STUDY_RETRIEVED, "Study 20261102 MR retrieved from ORTHANC", study_instance_uid="1.2.2"
        )
        update = await socket.receive_json_from(timeout=5)
        elapsed = time.monotonic() - started
        await socket.disconnect()
        return snapshot, update, elapsed

    snapshot, update, elapsed = run(scenario)

    assert snapshot["type"] == "snapshot"
    assert [i["message"] for i in snapshot["items"] if i["type"] == "event"] == ["Study 20261101 CT received from CT1"]
    assert update["type"] == "update"
    [item] = update["items"]
    assert (item["type"], item["kind"], item["message"]) == (
        "event",
        "study.retrieved",
        "Study 20261102 MR retrieved from ORTHANC",
    )
    assert item["id"] == Event.objects.get(study_instance_uid="1.2.2").pk
    assert elapsed < 2


def test_an_event_that_opens_its_study_carries_the_study_page(staff_cookie, data_dir, tmp_path):
    from tests.support.api import archived

    study = archived(tmp_path).series.study

    async def scenario():
        socket = dashboard_socket(staff_cookie)
        await socket.connect()
        await socket.receive_json_from(timeout=5)
        await sync_to_async(events.record)(
            EventKind.STUDY_RECEIVED, "received", study_instance_uid=study.study_instance_uid, open_study=True
        )
        item = await receive_items(socket, lambda i: i["type"] == "event")
        await socket.disconnect()
        return item

    item = run(scenario)

    assert item["open_study"] is True
    assert item["study_url"] == f"/admin/dicomnodes/study/{study.pk}/change/"


def test_an_association_shows_when_it_opens_and_again_when_it_closes(staff_cookie):
    def open_association():
        return AssociationLog.objects.create(
            started_at=timezone.now(), calling_ae="MODALITY1", called_ae="PACS", peer_address="127.0.0.1"
        )

    def close_association(row):
        AssociationLog.objects.filter(pk=row.pk).update(
            ended_at=timezone.now(), result=AssociationResult.RELEASED, instances_received=3, duration=0.2
        )

    async def scenario():
        socket = dashboard_socket(staff_cookie)
        await socket.connect()
        await socket.receive_json_from(timeout=5)
        row = await sync_to_async(open_association)()
        opened = await receive_items(socket, lambda i: i["type"] == "association")
        await sync_to_async(close_association)(row)
        closed = await receive_items(socket, lambda i: i["type"] == "association")
        await socket.disconnect()
        return row, opened, closed

    row, opened, closed = run(scenario)

    assert (opened["id"], opened["open"], opened["calling_ae"]) == (str(row.pk), True, "MODALITY1")
    assert (closed["id"], closed["open"], closed["result"], closed["instances_received"]) == (
        str(row.pk),
        False,
        "released",
        3,
    )


def test_transfer_and_burn_job_progress_and_hl7_messages_arrive(staff_cookie):
    peer = Peer.objects.create(name="Orthanc", ae_title="ORTHANC", host="127.0.0.1", port=4242)
    job = TransferJob.objects.create(kind="send", peer=peer, uids=["1.2.3"], total=10)
    burn = BurnJob.objects.create(kind="epson", trigger="immediate", state=JobState.STAGING)

    def progress():
        job.state, job.done = TransferState.RUNNING, 4
        job.save()
        burn.state = JobState.BURNING
        burn.save()
        HL7Message.objects.create(
            message_type="ORM^O01",
            control_id=uuid.uuid4().hex[:10],
            outcome=MessageOutcome.APPLIED,
            summary="new order",
        )

    async def scenario():
        socket = dashboard_socket(staff_cookie)
        await socket.connect()
        snapshot = await socket.receive_json_from(timeout=5)
        await sync_to_async(progress)()
        seen = {}
        while len(seen) < 3:
            message = await socket.receive_json_from(timeout=5)
            seen.update({item["type"]: item for item in message["items"]})
        await socket.disconnect()
        return snapshot, seen

    snapshot, seen = run(scenario)

    assert {(i["type"], i["state"]) for i in snapshot["items"] if "state" in i} == {
        ("transfer", "queued"),
        ("burn", "staging"),
    }
    assert (seen["transfer"]["state"], seen["transfer"]["progress"]) == ("running", "4/10")
    assert seen["burn"]["state"] == "burning"
    assert (seen["hl7"]["message_type"], seen["hl7"]["summary"]) == ("ORM^O01", "new order")


def test_an_event_pushed_and_polled_is_sent_once(staff_cookie):
    """With channels-redis an event comes twice (pushed, then polled): the
    second copy is dropped."""
    from channels.layers import get_channel_layer

    async def scenario():
        socket = dashboard_socket(staff_cookie)
        await socket.connect()
        await socket.receive_json_from(timeout=5)
        event = await sync_to_async(Event.objects.create)(kind=EventKind.STUDY_RECEIVED, message="pushed")
        item = await sync_to_async(events.event_item)(event)
        await get_channel_layer().group_send(events.DASHBOARD_GROUP, {"type": "dashboard.event", "item": item})
        first = await socket.receive_json_from(timeout=5)
        quiet = await socket.receive_nothing(timeout=1.5)
        await socket.disconnect()
        return first, quiet

    first, quiet = run(scenario)

    assert [i["message"] for i in first["items"]] == ["pushed"]
    assert quiet is True
