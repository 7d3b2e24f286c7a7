"""Outgoing HL7 (worklist/outgoing.py): completed worklist items, their ORM^O01
status updates, delivery over MLLP with retries, and the runscp trigger.

Personas: a RIS (RIS / HOSP) that ordered the procedure and listens for the
status update on a small MLLP listener written here; we are PACS / RADIOLOGY.
"""

import socket
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule

from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.index import IndexItem, IndexWriter
from dicomnodes.models import DicomServerSettings, Peer
from dicomnodes.signals import NewStudy
from pacs_site.management.commands.runpacs import process_table
from tests.support.dicomdata import make_ct
from tests.support.processes import MODALITY, STRANGER, free_port, wait_until
from worklist import outgoing
from worklist.er7 import Encoding, split_segments
from worklist.models import (
    DeliveryState,
    HL7Destination,
    ItemStatus,
    OutgoingHL7Message,
    WorklistItem,
    WorklistSettings,
)


class RisListener:
    """An MLLP listener in a thread: keeps what it receives, answers each frame with `answer(message)`."""

    def __init__(self, answer):
        self.answer = answer
        self.received = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\x1c\x0d" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                message = data.split(b"\x0b", 1)[-1].split(b"\x1c", 1)[0].decode("utf-8")
                self.received.append(message)
                reply = self.answer(message)
                if reply is not None:
                    conn.sendall(b"\x0b" + reply.encode() + b"\x1c\x0d")

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def ack(code):
    def answer(message):
        control_id = message.split("\r")[0].split("|")[9]
        return f"MSH|^~\\&|RIS|HOSP|PACS|RADIOLOGY|20261127101500||ACK^O01|A1|P|2.3.1\rMSA|{code}|{control_id}\r"

    return answer


@pytest.fixture
def ris():
    started = []

    def start(answer=ack("AA")):
        listener = RisListener(answer)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.close()


@pytest.fixture
def our_settings(db):
    cfg = WorklistSettings.load()
    cfg.sending_application = "PACS"
    cfg.sending_facility = "RADIOLOGY"
    cfg.save()
    return cfg


def an_item(**values):
    fields = dict(
        placer_order_number="PL100",
        filler_order_number="FI200",
        sending_application="RIS",
        sending_facility="HOSP",
        patient_id="PAT123",
        issuer_of_patient_id="HOSP",
        patient_name="Doe^Jane",
        patient_birth_date="19700101",
        patient_sex="F",
        accession_number="ACC1",
        requested_procedure_id="RP1",
        requested_procedure_code_value="CTCHEST",
        requested_procedure_code_meaning="CT chest",
        requested_procedure_code_scheme="L",
        scheduled_procedure_step_id="SPS1",
        modality="CT",
        study_instance_uid="1.2.3.4",
    )
    fields.update(values)
    return WorklistItem.objects.create(**fields)


def a_pending_message(port, item=None):
    destination = HL7Destination.objects.create(name="RIS", host="127.0.0.1", port=port)
    item = item or an_item(status=ItemStatus.COMPLETED)
    return OutgoingHL7Message.objects.create(item=item, destination=destination, message=outgoing.status_update(item))


def segments(text):
    return {s.name: s for s in split_segments(text, Encoding())}


@pytest.fixture
def queued(monkeypatch):
    """The deliver tasks queued (their pks), instead of the django-q broker."""
    calls = []
    monkeypatch.setattr(outgoing, "async_task", lambda func, pk: calls.append((func, pk)))
    return calls


# --- The message ------------------------------------------------------------------------------


def test_the_status_update_is_an_orm_o01_completing_the_order(our_settings):
    text = outgoing.status_update(an_item(patient_name="O'Brien^Ann|Marie"))
    s = segments(text)

    msh = s["MSH"]
    assert (msh.get(3), msh.get(4), msh.get(5), msh.get(6)) == ("PACS", "RADIOLOGY", "RIS", "HOSP")
    assert (msh.get(9, 1), msh.get(9, 2), msh.get(12)) == ("ORM", "O01", "2.3.1")
    assert (s["ORC"].get(1), s["ORC"].get(2), s["ORC"].get(3), s["ORC"].get(5)) == ("SC", "PL100", "FI200", "CM")
    assert (s["PID"].get(3), s["PID"].get(3, 4), s["PID"].get(5, 2)) == ("PAT123", "HOSP", "Ann|Marie")
    assert (s["OBR"].get(18), s["OBR"].get(4, 1), s["OBR"].get(24)) == ("ACC1", "CTCHEST", "CT")
    assert s["ZDS"].get(1) == "1.2.3.4"


def test_the_status_update_names_utf_8_when_the_name_does_not_fit_the_items_charset(our_settings):
    text = outgoing.status_update(an_item(patient_name="Παπαδόπουλος^Νίκος", specific_character_set="ISO_IR 100"))

    assert segments(text)["MSH"].get(18) == "UNICODE UTF-8"


# --- Delivery ---------------------------------------------------------------------------------


def test_it_sends_the_status_update_and_records_the_ack(our_settings, ris):
    listener = ris()
    row = a_pending_message(listener.port)

    outgoing.deliver(row.pk)

    assert len(listener.received) == 1
    s = segments(listener.received[0])
    assert (s["MSH"].get(3), s["MSH"].get(4), s["MSH"].get(5), s["MSH"].get(6)) == ("PACS", "RADIOLOGY", "RIS", "HOSP")
    assert s["MSH"].get(9) == "ORM"
    assert (s["ORC"].get(1), s["ORC"].get(5), s["OBR"].get(18)) == ("SC", "CM", "ACC1")
    row.refresh_from_db()
    assert (row.state, row.ack_code, row.attempts) == (DeliveryState.SENT, "AA", 0)
    assert "MSA|AA" in row.ack


def test_an_ae_answer_is_recorded_and_not_retried(our_settings, ris):
    row = a_pending_message(ris(ack("AE")).port)

    outgoing.deliver(row.pk)

    row.refresh_from_db()
    assert (row.state, row.ack_code) == (DeliveryState.SENT, "AE")
    assert not Schedule.objects.filter(func=outgoing.DELIVER_TASK).exists()


def test_a_refused_connection_counts_an_attempt_and_schedules_a_retry(our_settings):
    row = a_pending_message(free_port())
    before = timezone.now()

    outgoing.deliver(row.pk)

    row.refresh_from_db()
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 1)
    assert "ConnectionRefusedError" in row.error
    retry = Schedule.objects.get(func=outgoing.DELIVER_TASK)
    assert (retry.func, retry.schedule_type, retry.args) == ("worklist.outgoing.deliver", Schedule.ONCE, f"({row.pk},)")
    assert before + timedelta(seconds=55) < retry.next_run < before + timedelta(seconds=65)
    assert retry.next_run == row.next_attempt_at


def test_a_listener_that_closes_without_an_ack_counts_as_a_failure(our_settings, ris):
    listener = ris(lambda message: None)
    row = a_pending_message(listener.port)

    outgoing.deliver(row.pk)

    row.refresh_from_db()
    assert (row.state, row.attempts, row.ack_code) == (DeliveryState.PENDING, 1, "")
    assert "without an ACK" in row.error
    assert len(listener.received) == 1


def test_the_fourth_failure_gives_up(our_settings):
    row = a_pending_message(free_port())
    OutgoingHL7Message.objects.filter(pk=row.pk).update(attempts=3)

    outgoing.deliver(row.pk)

    row.refresh_from_db()
    assert (row.state, row.attempts) == (DeliveryState.FAILED, 4)
    assert not Schedule.objects.filter(func=outgoing.DELIVER_TASK).exists()


def test_a_message_not_yet_due_is_not_sent(our_settings, ris):
    listener = ris()
    row = a_pending_message(listener.port)
    # Claimed by another worker (or waiting for its retry).
    OutgoingHL7Message.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now() + timedelta(minutes=1))

    outgoing.deliver(row.pk)

    row.refresh_from_db()
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)
    assert listener.received == []


def test_a_sent_message_is_not_sent_again(our_settings, ris):
    listener = ris()
    row = a_pending_message(listener.port)
    outgoing.deliver(row.pk)

    outgoing.deliver(row.pk)

    assert len(listener.received) == 1


# --- Matching arrived studies -----------------------------------------------------------------


def test_a_new_study_with_the_accession_number_completes_the_item(
    our_settings, queued, django_capture_on_commit_callbacks
):
    item = an_item(study_instance_uid="")
    destination = HL7Destination.objects.create(name="RIS", host="ris", port=2576)
    HL7Destination.objects.create(name="old RIS", host="old", port=2576, enabled=False)

    with django_capture_on_commit_callbacks(execute=True):
        pks = outgoing.studies_arrived([("9.9.9", "ACC1")])

    item.refresh_from_db()
    assert item.status == ItemStatus.COMPLETED
    row = OutgoingHL7Message.objects.get()
    assert (row.destination, row.item, row.state) == (destination, item, DeliveryState.PENDING)
    assert pks == [row.pk]
    assert queued == [("worklist.outgoing.deliver", row.pk)]


def test_a_new_study_with_the_study_uid_completes_the_item(our_settings, queued):
    item = an_item(accession_number="")

    outgoing.studies_arrived([("1.2.3.4", "")])

    item.refresh_from_db()
    assert item.status == ItemStatus.COMPLETED


def test_an_empty_accession_number_matches_nothing(our_settings, queued):
    item = an_item(accession_number="", study_instance_uid="")

    outgoing.studies_arrived([("9.9.9", "")])

    item.refresh_from_db()
    assert item.status == ItemStatus.SCHEDULED


def test_a_cancelled_or_completed_item_is_left_alone(our_settings, queued):
    HL7Destination.objects.create(name="RIS", host="ris", port=2576)
    cancelled = an_item(status=ItemStatus.CANCELLED)

    outgoing.studies_arrived([("1.2.3.4", "ACC1")])

    cancelled.refresh_from_db()
    assert cancelled.status == ItemStatus.CANCELLED
    assert not OutgoingHL7Message.objects.exists()


def test_without_open_items_arrival_costs_one_query(our_settings, django_assert_num_queries):
    an_item(status=ItemStatus.COMPLETED)

    with django_assert_num_queries(1):
        assert outgoing.studies_arrived([("1.2.3.4", "ACC1")]) == []


def test_a_study_from_an_unknown_sender_completes_no_item_and_tells_the_ris_nothing(our_settings, queued):
    item = an_item()
    HL7Destination.objects.create(name="RIS", host="ris", port=2576)

    outgoing.on_studies_created(None, studies=[NewStudy("9.9.9", "ACC1", from_known_peer=False)])

    item.refresh_from_db()
    assert item.status == ItemStatus.SCHEDULED
    assert not OutgoingHL7Message.objects.exists()


def test_a_study_from_a_known_peer_completes_its_item(our_settings, queued):
    item = an_item()

    outgoing.on_studies_created(None, studies=[NewStudy("9.9.9", "ACC1", from_known_peer=True)])

    item.refresh_from_db()
    assert item.status == ItemStatus.COMPLETED


def test_with_any_sender_trusted_a_study_from_anyone_completes_its_item(our_settings, queued):
    DicomServerSettings.objects.update_or_create(pk=1, defaults={"trust_any_sender": True})
    item = an_item()

    outgoing.on_studies_created(None, studies=[NewStudy("9.9.9", "ACC1", from_known_peer=False)])

    item.refresh_from_db()
    assert item.status == ItemStatus.COMPLETED


# --- The index writer's hook ------------------------------------------------------------------


def stored(path):
    return IndexItem(header=read_header_file(path), file_size=1, file_is_new=True, overwrite=False)


@pytest.mark.django_db(transaction=True)
def test_the_index_writer_reports_each_new_study_once_after_its_commit(tmp_path):
    calls = []
    writer = IndexWriter(on_studies_created=calls.append).start()
    first = make_ct(tmp_path / "a.dcm", study_uid="1.2.9.1", accession="ACC7")
    same_study = make_ct(tmp_path / "b.dcm", study_uid="1.2.9.1", accession="ACC7")
    try:
        writer.submit(stored(first)).wait(10)
        writer.submit(stored(same_study)).wait(10)
    finally:
        writer.stop()

    assert calls == [[NewStudy("1.2.9.1", "ACC7", from_known_peer=True)]]


@pytest.mark.django_db(transaction=True)
def test_a_failing_hook_does_not_fail_the_ingest(tmp_path):
    def broken(pairs):
        raise RuntimeError("worklist down")

    writer = IndexWriter(on_studies_created=broken).start()
    try:
        result = writer.submit(stored(make_ct(tmp_path / "a.dcm"))).wait(10)
    finally:
        writer.stop()

    assert result == "stored"


# --- End to end -------------------------------------------------------------------------------


def a_known_modality(scp):
    """MODALITY as a peer on this host; may query too, so that the test can
    wait until runscp has read the peer list."""
    Peer.objects.create(name="CT", ae_title=MODALITY, host="127.0.0.1", may_store=True, may_query=True)
    scp.wait_until_allowed(MODALITY, "find")


def test_images_stored_to_runscp_complete_the_item_and_the_ris_hears_of_it(our_settings, shared_scp, tmp_path, ris):
    listener = ris()
    item = an_item(study_instance_uid="")
    HL7Destination.objects.create(name="RIS", host="127.0.0.1", port=listener.port)
    a_known_modality(shared_scp)

    assert shared_scp.store(make_ct(tmp_path / "ct.dcm", accession="ACC1")).returncode == 0

    wait_until(lambda: OutgoingHL7Message.objects.exists(), 15, message="a status update")
    item.refresh_from_db()
    assert item.status == ItemStatus.COMPLETED
    row = OutgoingHL7Message.objects.get()
    assert row.state == DeliveryState.PENDING
    outgoing.deliver(row.pk)  # what the qcluster worker does
    row.refresh_from_db()
    assert (row.state, row.ack_code) == (DeliveryState.SENT, "AA")
    assert segments(listener.received[0])["OBR"].get(18) == "ACC1"


def test_images_from_an_unknown_caller_complete_no_item_and_the_ris_hears_nothing(
    our_settings, shared_scp, tmp_path
):
    HL7Destination.objects.create(name="RIS", host="127.0.0.1", port=free_port())
    forged = an_item(accession_number="ACC1", study_instance_uid="")
    real = an_item(accession_number="ACC2", study_instance_uid="")
    a_known_modality(shared_scp)

    assert shared_scp.store(make_ct(tmp_path / "forged.dcm", accession="ACC1"), calling=STRANGER).returncode == 0
    # One index writer announces new studies in order: once the known
    # modality's study completed its item, the stranger's was looked at.
    assert shared_scp.store(make_ct(tmp_path / "real.dcm", accession="ACC2")).returncode == 0
    wait_until(lambda: OutgoingHL7Message.objects.exists(), 15, message="the known modality's status update")

    forged.refresh_from_db()
    assert forged.status == ItemStatus.SCHEDULED
    assert list(OutgoingHL7Message.objects.values_list("item", flat=True)) == [real.pk]


def test_runpacs_runs_the_task_worker():
    assert process_table()["worker"][-1] == "qcluster"


# --- Admin ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:No directory at")
def test_the_admin_shows_an_outgoing_message_read_only(our_settings, an_admin):
    row = a_pending_message(2576)
    url = reverse("admin:worklist_outgoinghl7message_change", args=[row.pk])

    page = an_admin.get(url)

    assert page.status_code == 200
    assert "ORM^O01" in page.content.decode()
    assert an_admin.post(url, {"state": "sent"}).status_code == 403


@pytest.mark.filterwarnings("ignore:No directory at")
def test_resend_in_the_admin_makes_a_failed_message_pending_and_queues_it(
    our_settings, an_admin, queued, django_capture_on_commit_callbacks
):
    row = a_pending_message(2576)
    OutgoingHL7Message.objects.filter(pk=row.pk).update(state=DeliveryState.FAILED, attempts=4, error="refused")

    with django_capture_on_commit_callbacks(execute=True):
        an_admin.post(
            reverse("admin:worklist_outgoinghl7message_changelist"),
            {"action": "resend", "_selected_action": [row.pk]},
        )

    row.refresh_from_db()
    assert (row.state, row.attempts, row.error) == (DeliveryState.PENDING, 0, "")
    assert queued == [("worklist.outgoing.deliver", row.pk)]


@pytest.mark.filterwarnings("ignore:No directory at")
def test_resend_needs_the_change_permission_of_outgoing_messages(our_settings, client, django_user_model, queued):
    row = a_pending_message(2576)
    OutgoingHL7Message.objects.filter(pk=row.pk).update(state=DeliveryState.FAILED, attempts=4, error="refused")
    viewer = django_user_model.objects.create_user("viewer", password=None, is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_outgoinghl7message"))
    client.force_login(viewer)
    changelist = reverse("admin:worklist_outgoinghl7message_changelist")

    assert "resend" not in client.get(changelist).content.decode()
    client.post(changelist, {"action": "resend", "_selected_action": [row.pk]})

    row.refresh_from_db()
    assert (row.state, row.attempts) == (DeliveryState.FAILED, 4)
    assert queued == []
    viewer.user_permissions.add(Permission.objects.get(codename="change_outgoinghl7message"))
    assert 'value="resend"' in client.get(changelist).content.decode()
