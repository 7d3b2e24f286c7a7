"""What a dashboard is sent (portal.dashboard.Feed), without a websocket:
each change once, nothing when nothing changed."""

import datetime

from django.utils import timezone

from dicomnodes.models import AssociationLog, AssociationResult, TransferJob, TransferState
from pacs_site import events
from pacs_site.models import EventKind
from portal.dashboard import Feed
from publishing.models import BurnJob, JobState
from worklist.models import HL7Message, MessageOutcome


def kinds(items):
    return [
        (item["type"], item.get("state") or item.get("result") or item.get("outcome") or item.get("message"))
        for item in items
    ]


def test_nothing_changed_sends_nothing(orthanc_peer):
    events.record(EventKind.STUDY_RECEIVED, "old study")
    TransferJob.objects.create(kind="send", peer=orthanc_peer, uids=["1.2"], state=TransferState.RUNNING)
    feed = Feed()
    assert len(feed.snapshot()) == 2

    assert feed.poll() == []


def test_an_association_opened_and_closed_between_two_polls_shows_once_closed(db):
    feed = Feed()
    feed.snapshot()
    AssociationLog.objects.create(
        started_at=timezone.now(), ended_at=timezone.now(), calling_ae="CT1", result=AssociationResult.ABORTED
    )

    assert kinds(feed.poll()) == [("association", "aborted")]
    assert feed.poll() == []


def test_an_association_open_longer_than_the_lookback_still_shows_its_close(db):
    row = AssociationLog.objects.create(started_at=timezone.now() - datetime.timedelta(minutes=10), calling_ae="CT1")
    feed = Feed()
    assert kinds(feed.snapshot()) == [("association", "open")]
    AssociationLog.objects.filter(pk=row.pk).update(result=AssociationResult.RELEASED, ended_at=timezone.now())

    assert kinds(feed.poll()) == [("association", "released")]


def test_a_job_is_sent_on_each_change_until_it_finishes(orthanc_peer):
    feed = Feed()
    feed.snapshot()
    job = TransferJob.objects.create(kind="send", peer=orthanc_peer, uids=["1.2"], total=3)
    assert kinds(feed.poll()) == [("transfer", "queued")]

    job.state, job.done = TransferState.RUNNING, 1
    job.save()
    assert [(i["state"], i["progress"]) for i in feed.poll()] == [("running", "1/3")]
    job.state, job.done = TransferState.SUCCEEDED, 3
    job.save()
    assert kinds(feed.poll()) == [("transfer", "succeeded")]
    assert feed.poll() == []

    # Sent again by hand (resubmitted): it is back in the queue.
    TransferJob.objects.filter(pk=job.pk).update(state=TransferState.QUEUED, updated_at=timezone.now())
    assert kinds(feed.poll()) == [("transfer", "queued")]


def test_burn_jobs_and_hl7_messages_are_followed(db):
    feed = Feed()
    feed.snapshot()
    burn = BurnJob.objects.create(kind="primera", trigger="delayed", state=JobState.COLLECTING)
    HL7Message.objects.create(message_type="ADT^A08", control_id="1", outcome=MessageOutcome.REJECTED)

    assert kinds(feed.poll()) == [("hl7", "rejected"), ("burn", "collecting")]
    burn.state = JobState.DONE
    burn.save()
    assert kinds(feed.poll()) == [("burn", "done")]
    assert feed.poll() == []


def test_an_event_pushed_first_is_not_sent_again_by_the_poll(db):
    feed = Feed()
    feed.snapshot()
    event = events.record(EventKind.STUDY_RECEIVED, "pushed")

    assert feed.is_new_event(event.pk) is True
    assert feed.poll() == []
    assert feed.is_new_event(event.pk) is False
