"""The transfer queue without a network: submitting, claiming, cancelling."""

import datetime

import pytest
from django.utils import timezone

from dicomnodes.models import DicomServerSettings, Peer, TransferJob, TransferState
from dicomnodes.transfers.jobs import TransferError, cancel_job, resubmit_job, submit_job
from dicomnodes.transfers.queue import claim_due, claim_next, requeue_stale, retry_delay

pytestmark = [pytest.mark.django_db, pytest.mark.archive]


@pytest.fixture
def remote_peer():
    return Peer.objects.create(name="remote", ae_title="REMOTE", host="127.0.0.1", port=104)


def queued(peer, n):
    return [TransferJob.objects.create(kind="move", peer=peer, uids=[f"1.2.3.{i}"]) for i in range(n)]


def test_jobs_are_claimed_first_come_first_served_up_to_the_limit(remote_peer):
    row = DicomServerSettings.load()
    row.max_outgoing_connections = 2
    row.save()
    jobs = queued(remote_peer, 3)
    assert claim_next("w").pk == jobs[0].pk
    assert claim_next("w").pk == jobs[1].pk
    assert claim_next("w") is None  # two run: the limit
    row.max_outgoing_connections = 3  # changed at run time
    row.save()
    third = claim_next("w")
    assert third.pk == jobs[2].pk and third.state == TransferState.RUNNING and third.attempts == 1


def test_one_claim_takes_every_free_slot_in_queue_order(remote_peer):
    row = DicomServerSettings.load()
    row.max_outgoing_connections = 3
    row.save()
    jobs = queued(remote_peer, 5)
    claim_next("w")  # one runs already
    claimed = claim_due("w")
    assert [job.pk for job in claimed] == [jobs[1].pk, jobs[2].pk]
    assert all(job.state == TransferState.RUNNING and job.worker == "w" for job in claimed)
    assert claim_due("w") == []  # three run: the limit
    assert TransferJob.objects.filter(state=TransferState.QUEUED).count() == 2


def test_a_job_is_claimed_by_itself_only_at_the_head_of_the_queue(remote_peer):
    first, second = queued(remote_peer, 2)
    assert claim_next("cli", job_id=second.pk) is None
    assert claim_next("cli", job_id=first.pk).pk == first.pk
    assert [job.pk for job in claim_due("cli", job_id=second.pk)] == [second.pk]  # alone, though a slot is free


def test_a_job_waiting_for_its_retry_is_not_claimed_but_does_not_block_the_others(remote_peer):
    waiting, ready = queued(remote_peer, 2)
    TransferJob.objects.filter(pk=waiting.pk).update(next_attempt_at=timezone.now() + datetime.timedelta(minutes=5))
    assert claim_next("w").pk == ready.pk
    assert claim_next("w") is None


def test_a_claimed_job_is_not_claimed_twice(remote_peer):
    (job,) = queued(remote_peer, 1)
    assert claim_next("a") is not None
    assert claim_next("b") is None
    assert TransferJob.objects.get(pk=job.pk).worker == "a"


def test_cancelling_a_queued_job_takes_effect_at_once(remote_peer):
    (job,) = queued(remote_peer, 1)
    assert cancel_job(job) is True
    job.refresh_from_db()
    assert job.state == TransferState.CANCELLED and job.finished_at is not None
    assert claim_next("w") is None
    assert cancel_job(job) is False  # finished already


def test_cancelling_a_running_job_asks_its_runner_to_stop(remote_peer):
    (job,) = queued(remote_peer, 1)
    claim_next("w")
    assert cancel_job(job) is True
    job.refresh_from_db()
    assert job.state == TransferState.RUNNING and job.cancel_requested is True


def test_a_failed_job_can_be_resubmitted_and_keeps_what_it_delivered(remote_peer):
    (job,) = queued(remote_peer, 1)
    TransferJob.objects.filter(pk=job.pk).update(
        state=TransferState.FAILED, attempts=5, delivered=["1.2.9"], last_error="x"
    )
    assert resubmit_job(job) is True
    job.refresh_from_db()
    assert (job.state, job.attempts, job.delivered, job.last_error) == (TransferState.QUEUED, 0, ["1.2.9"], "")
    assert resubmit_job(job) is False  # queued: nothing to resubmit


def test_a_running_job_whose_worker_died_goes_back_to_the_queue(remote_peer):
    alive, dead = queued(remote_peer, 2)
    claim_next("w")
    claim_next("w")
    TransferJob.objects.filter(pk=dead.pk).update(heartbeat_at=timezone.now() - datetime.timedelta(minutes=5))
    assert requeue_stale() == 1
    assert TransferJob.objects.get(pk=dead.pk).state == TransferState.QUEUED
    assert TransferJob.objects.get(pk=alive.pk).state == TransferState.RUNNING


def test_retry_delays_follow_the_setting_then_run_out():
    row = DicomServerSettings.load()
    row.retry_delays = "1m 5m 15m 1h"
    row.save()
    assert [retry_delay(n) for n in (1, 2, 3, 4, 5)] == [
        datetime.timedelta(minutes=1),
        datetime.timedelta(minutes=5),
        datetime.timedelta(minutes=15),
        datetime.timedelta(hours=1),
        None,
    ]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(uids=[]), "no UIDs"),
        (dict(uids=["1.2.abc"]), "not a valid UID"),
        (dict(kind="fax"), "unknown kind"),
        (dict(level="PATIENT"), "unknown level"),
        (dict(kind="send"), "none of these study UIDs is stored here"),
        (dict(level="SERIES"), "needs the Study Instance UID"),
        (dict(move_destination="TWO WORDS"), "C-MOVE destination"),
    ],
)
def test_bad_submissions_are_refused_with_a_reason(remote_peer, changes, message):
    args = dict(kind="move", peer=remote_peer, uids=["1.2.3"], kick_runner=False) | changes
    with pytest.raises(TransferError, match=message):
        submit_job(**args)
    assert not TransferJob.objects.exists()
