"""Transfer jobs in processes of their own (dicomnodes/transfers/processes.py):
several jobs at once run in several processes, the limit of outgoing
connections stays exact when dispatchers in several processes claim at once,
and a job whose process is killed goes back to the queue.
"""

import datetime
import logging
import multiprocessing
import os
import signal
import threading

import pytest
from django.db import connections
from django.utils import timezone
from pydicom import dcmread

from dicomnodes.models import DicomServerSettings, Peer, TransferJob, TransferState
from dicomnodes.transfers.jobs import requeue_dead, run_next, submit_job
from dicomnodes.transfers.processes import process_name
from dicomnodes.transfers.queue import STALE_AFTER, claim_due, claim_next
from tests.support.dicomdata import make_ct_series
from tests.support.processes import wait_until
from tests.support.transfer import RecordingScp, store_to_us

pytestmark = pytest.mark.archive


def settings(**values):
    row = DicomServerSettings.load()
    for name, value in values.items():
        setattr(row, name, value)
    row.save()


def a_study_here(scp, tmp_path, name, count):
    paths = make_ct_series(tmp_path / name, count)
    store_to_us(scp, tmp_path / name)
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def job_pid(job):
    """The process named in the job's row (`host:pid`, written by the
    dispatcher once the children of a claim run)."""
    host, pid = TransferJob.objects.get(pk=job.pk).worker.split(":")
    return int(pid)


def proc_stat(pid):
    """(state, parent pid) of a process, from /proc; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return fields[0], int(fields[1])


def is_gone(pid):
    stat = proc_stat(pid)
    return stat is None or stat[0] == "Z"  # a zombie ran its course


def test_four_jobs_run_in_four_processes_and_never_hold_more_associations_than_the_limit(start_scp, qcluster, tmp_path):
    """django-q2's two workers each get a task (one per submitted job) and
    compete for the two slots; the peer counts the associations it holds."""
    scp = start_scp()
    settings(max_outgoing_connections=2)
    studies = [a_study_here(scp, tmp_path, f"s{i}", 2) for i in range(4)]
    recorder = RecordingScp(delay=0.3).start()
    worker = qcluster()
    try:
        peer = Peer.objects.create(name="recorder", ae_title=recorder.ae_title, host="127.0.0.1", port=recorder.port)
        jobs = [submit_job(kind="send", peer=peer, uids=[uid]) for uid in studies]
        wait_until(
            lambda: TransferJob.objects.filter(state=TransferState.SUCCEEDED).count() == 4,
            60,
            message=f"the four jobs to succeed\n{worker.log()}",
        )
    finally:
        recorder.stop()
    assert recorder.max_concurrent == 2  # the limit, and it was used
    assert recorder.associations == 4
    assert len(recorder.received) == 8 == len(set(recorder.received))
    pids = {job_pid(job) for job in jobs}
    assert len(pids) == 4 and os.getpid() not in pids
    assert all(is_gone(pid) for pid in pids)  # each process ended with its job


def _claim_many(barrier, tries, batch):
    barrier.wait(10)
    if batch:  # every free slot in one transaction
        claimed = sum(len(claim_due(f"claimer-{os.getpid()}")) for _ in range(tries))
    else:
        claimed = sum(claim_next(f"claimer-{os.getpid()}") is not None for _ in range(tries))
    connections.close_all()
    os._exit(claimed)  # the number of jobs this process claimed


def test_dispatchers_in_six_processes_claiming_at_once_take_exactly_the_free_slots(transactional_db):
    settings(max_outgoing_connections=3)
    peer = Peer.objects.create(name="remote", ae_title="REMOTE", host="127.0.0.1", port=104)
    for i in range(20):
        TransferJob.objects.create(kind="move", peer=peer, uids=[f"1.2.3.{i}"])
    connections.close_all()  # the children open their own
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(6)
    procs = [fork.Process(target=_claim_many, args=(barrier, 5, i % 2)) for i in range(6)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs if proc.exitcode is None or proc.exitcode < 0] == []
    assert sum(proc.exitcode for proc in procs) == 3
    running = TransferJob.objects.filter(state=TransferState.RUNNING)
    assert running.count() == 3
    assert sorted(running.values_list("pk", flat=True)) == sorted(
        TransferJob.objects.order_by("pk")[:3].values_list("pk", flat=True)
    )


def test_killing_a_job_process_queues_the_job_again_and_it_completes(shared_scp, tmp_path, caplog):
    settings(max_outgoing_connections=1)
    study_uid = a_study_here(shared_scp, tmp_path, "s", 6)
    recorder = RecordingScp(delay=0.4).start()
    try:
        peer = Peer.objects.create(name="recorder", ae_title=recorder.ae_title, host="127.0.0.1", port=recorder.port)
        job = submit_job(kind="send", peer=peer, uids=[study_uid], kick_runner=False)
        with caplog.at_level(logging.WARNING, logger="dicomnodes.transfers.jobs"):
            dispatcher = threading.Thread(target=run_next)
            dispatcher.start()
            wait_until(
                lambda: TransferJob.objects.filter(pk=job.pk, state=TransferState.RUNNING, done__gte=1).exists(),
                15,
                message="the job's process to deliver an instance",
            )
            killed = job_pid(job)
            os.kill(killed, signal.SIGKILL)
            dispatcher.join(60)
            assert not dispatcher.is_alive()
    finally:
        recorder.stop()
    job.refresh_from_db()
    assert f"transfer job {job.pk}: process {killed} killed by SIGKILL; queued" in caplog.text
    assert (job.state, job.attempts, job.done) == (TransferState.SUCCEEDED, 2, 6), job.last_error
    assert job_pid(job) != killed
    assert set(recorder.received) == {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sorted((tmp_path / "s").iterdir())
    }


def test_a_job_whose_dispatcher_is_killed_ends_with_it_and_is_queued_again(start_scp, qcluster, tmp_path):
    """The django-q2 worker running the dispatcher is killed: the job's
    process ends with it (PR_SET_PDEATHSIG), so nothing runs unwatched, and
    the job's row goes stale and is queued again by the next dispatcher."""
    scp = start_scp()
    study_uid = a_study_here(scp, tmp_path, "s", 6)
    recorder = RecordingScp(delay=0.4).start()
    worker = qcluster()
    try:
        peer = Peer.objects.create(name="recorder", ae_title=recorder.ae_title, host="127.0.0.1", port=recorder.port)
        job = submit_job(kind="send", peer=peer, uids=[study_uid])
        wait_until(
            lambda: TransferJob.objects.filter(pk=job.pk, state=TransferState.RUNNING, done__gte=1).exists(),
            30,
            message=f"the job's process to deliver an instance\n{worker.log()}",
        )
        child = job_pid(job)
        _, dispatcher = proc_stat(child)
        assert dispatcher != worker.proc.pid  # a django-q2 worker process, not its sentinel
        os.kill(dispatcher, signal.SIGKILL)
        wait_until(lambda: is_gone(child), 10, message="the job's process to end with its dispatcher")
        worker.stop()
        job.refresh_from_db()
        assert job.state == TransferState.RUNNING and job.done < 6  # nobody saw it end
        stale = timezone.now() - STALE_AFTER - datetime.timedelta(seconds=1)
        TransferJob.objects.filter(pk=job.pk).update(heartbeat_at=stale)  # instead of waiting a minute
        assert run_next() == 1
    finally:
        recorder.stop()
    job.refresh_from_db()
    assert (job.state, job.attempts, job.done) == (TransferState.SUCCEEDED, 2, 6), job.last_error
    assert len(set(recorder.received)) == 6


# --- what the dispatcher does when a job's process ended (no network) ------------------------


@pytest.fixture
def running_job(db):
    peer = Peer.objects.create(name="remote", ae_title="REMOTE", host="127.0.0.1", port=104)

    def make(**fields):
        values = dict(state=TransferState.RUNNING, attempts=1, worker=process_name(4242)) | fields
        return TransferJob.objects.create(kind="send", peer=peer, uids=["1.2.3"], **values)

    return make


KILLED = signal.SIGKILL.value  # a wait status: killed by SIGKILL


def test_a_job_whose_process_was_killed_is_queued_at_once(running_job):
    job = running_job()
    assert requeue_dead(job.pk, 4242, KILLED) == TransferState.QUEUED
    job.refresh_from_db()
    assert job.state == TransferState.QUEUED and job.next_attempt_at <= timezone.now()
    assert job.last_error == "the process running this job killed by SIGKILL; the job was queued again"


def test_a_job_that_kills_its_process_every_time_fails_when_the_retries_are_used_up(running_job):
    settings(retry_delays="1s")
    job = running_job(attempts=2)
    assert requeue_dead(job.pk, 4242, KILLED) == TransferState.FAILED
    job.refresh_from_db()
    assert job.finished_at is not None and "(gave up after 2 attempts)" in job.last_error


def test_a_job_cancelled_before_its_process_died_ends_cancelled(running_job):
    job = running_job(cancel_requested=True)
    assert requeue_dead(job.pk, 4242, KILLED) == TransferState.CANCELLED


def test_a_job_its_process_finished_or_another_process_runs_is_left_alone(running_job):
    finished = running_job(state=TransferState.SUCCEEDED)
    assert requeue_dead(finished.pk, 4242, 0) is None
    elsewhere = running_job(worker=process_name(5151))  # queued again as stale, then claimed
    assert requeue_dead(elsewhere.pk, 4242, KILLED) is None
    assert TransferJob.objects.get(pk=elsewhere.pk).state == TransferState.RUNNING
