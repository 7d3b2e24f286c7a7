"""Outgoing transfer jobs: submit, claim, run, retry, cancel.

The queue is the TransferJob table.  django-q2 supplies the workers:

- `submit_job()` saves a queued job and, after the commit, queues the task
  `run_next` (`kick()`);
- `run_next()` (a django-q2 task; also called by `manage.py dicom send|
  retrieve` and scheduled every minute as a safety net) claims queued jobs
  first come first served while fewer than "maximum outgoing connections"
  jobs run, runs each claimed job in a process of its own (forked:
  `processes`), and claims again whenever one ends.  So the limit holds
  across every worker process and does not depend on how many django-q2
  workers there are, a changed setting applies at the next claim, and
  jobs at once use every core;
- a job whose process died goes back to the queue at once (its
  dispatcher saw the child end); one whose dispatcher died too, after 60 s
  without a heartbeat (`queue.requeue_stale`);
- a job that fails for a network reason goes back to the queue with
  `next_attempt_at` set from the retry delays; runscp's main loop kicks
  `run_next` within its 2 s poll once that time passes, and a one-off
  django-q2 schedule does too (up to 30 s late: the safety net when runscp
  is stopped);
- `cancel_job()` cancels a queued job at once, and asks a running one to stop:
  its monitor thread sees the flag within a second and aborts the
  association.

`run_job()` runs one claimed job (in its process): `runner.JobRun` holds its
association, progress and monitor; `send` (C-STORE) and `retrieve` (C-MOVE/C-GET) do the
network work; `queue` holds the low-level claiming and waking.
"""

import logging
import os

from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone
from pydicom.uid import UID

from dicomnodes.models import Peer, Study, TransferJob, TransferKind, TransferLevel, TransferState
from dicomnodes.query.levels import instances_at
from dicomnodes.transfers.processes import JobProcesses, describe_exit, process_name
from dicomnodes.transfers.queue import claim_due, kick, requeue_stale, retry_delay, wake_for_retries, worker_name
from dicomnodes.transfers.retrieve import get, move, stop_index_writer, studies_retrieved
from dicomnodes.transfers.runner import Cancelled, JobRun, Monitor, NetworkFailure, Refused
from dicomnodes.transfers.send import send
from dicomnodes.validators import is_valid_ae_title

logger = logging.getLogger(__name__)


class TransferError(ValueError):
    """A job that cannot be submitted: the message says why."""


# --- submitting, cancelling ---------------------------------------------------------


def submit_job(
    *,
    kind,
    peer,
    level=TransferLevel.STUDY,
    uids,
    study_uid="",
    series_uid="",
    move_destination="",
    requested_by=None,
    description="",
    kick_runner=True,
):
    """Validate and queue one job; returns the TransferJob.

    `uids` are Study, Series or SOP Instance UIDs as `level` says.  A
    retrieve at SERIES level needs `study_uid`, at IMAGE level also
    `series_uid` (PS3.4 C.4.2.2.1: the keys of the levels above).  A send
    needs the instances to be stored here.
    """
    if kind not in TransferKind.values:
        raise TransferError(f"unknown kind {kind!r} (one of {', '.join(TransferKind.values)})")
    if level not in TransferLevel.values:
        raise TransferError(f"unknown level {level!r} (one of {', '.join(TransferLevel.values)})")
    if not isinstance(peer, Peer):
        raise TransferError("no peer given")
    uids = [str(u).strip() for u in (uids or []) if str(u).strip()]
    if not uids:
        raise TransferError("nothing to transfer: no UIDs given")
    for uid in [*uids, study_uid, series_uid]:
        if uid and not UID(uid).is_valid:
            raise TransferError(f"{uid[:70]!r} is not a valid UID")
    if kind != TransferKind.SEND:
        if level in (TransferLevel.SERIES, TransferLevel.IMAGE) and not study_uid:
            raise TransferError(f"a retrieve at level {level} needs the Study Instance UID")
        if level == TransferLevel.IMAGE and not series_uid:
            raise TransferError("a retrieve at level IMAGE needs the Series Instance UID")
    if move_destination and (kind != TransferKind.MOVE or not is_valid_ae_title(move_destination)):
        raise TransferError(f"{move_destination!r}: a C-MOVE destination is the AE title of a C-MOVE job")
    total = None
    if kind == TransferKind.SEND:
        total = instances_at(level, uids).count()
        if total == 0:
            raise TransferError(f"none of these {TransferLevel(level).label} UIDs is stored here")
    job = TransferJob.objects.create(
        kind=kind,
        peer=peer,
        level=level,
        uids=uids,
        study_uid=study_uid,
        series_uid=series_uid,
        move_destination=move_destination,
        total=total,
        requested_by=requested_by,
        description=(description or _describe(kind, level, uids))[:255],
    )
    logger.info("transfer job %s queued: %s", job.pk, job.description)
    if kick_runner:
        transaction.on_commit(kick)
    return job


def _describe(kind, level, uids):
    noun = TransferLevel(level).label + ("" if len(uids) == 1 else "s")
    if len(uids) == 1 and level == TransferLevel.STUDY:
        study = _study_label(uids[0])
        if study:
            return f"{TransferKind(kind).label}: study {study}"
    return f"{TransferKind(kind).label}: {len(uids)} {noun}"


def _study_label(uid):
    row = Study.objects.filter(study_instance_uid=uid).values("study_date", "modalities_in_study").first()
    if not row:
        return ""
    return f"{row['study_date'] or '(no date)'} {row['modalities_in_study']}".strip()


def cancel_job(job):
    """Cancel a queued job now, or ask a running one to stop (its
    association is aborted within about a second).  False when the job had
    finished already."""
    now = timezone.now()
    # Conditional updates: the job may have been claimed, or have finished,
    # since the caller read it.
    if TransferJob.objects.filter(pk=job.pk, state=TransferState.QUEUED).update(
        state=TransferState.CANCELLED, finished_at=now, last_error="cancelled before it ran"
    ):
        logger.info("transfer job %s cancelled while queued", job.pk)
        return True
    asked = TransferJob.objects.filter(pk=job.pk, state=TransferState.RUNNING).update(cancel_requested=True)
    if asked:
        logger.info("transfer job %s: cancel requested", job.pk)
    return bool(asked)


def resubmit_job(job):
    """Queue a finished (failed, partly failed, cancelled) job again.
    Instances it delivered already are not sent again."""
    done = TransferJob.objects.filter(
        pk=job.pk, state__in=[TransferState.FAILED, TransferState.PARTLY_FAILED, TransferState.CANCELLED]
    ).update(
        state=TransferState.QUEUED,
        attempts=0,
        next_attempt_at=timezone.now(),
        cancel_requested=False,
        last_error="",
        failed=0,
        failed_uids=[],
        finished_at=None,
    )
    if done:
        transaction.on_commit(kick)
    return bool(done)


# --- running ----------------------------------------------------------------------------


def run_next(*, job_id=None):
    """Claim and run jobs until none can be claimed and none runs here.

    1. claim jobs (first come, first served) while fewer than "maximum
       outgoing connections" run, anywhere, in one transaction
       (`queue.claim_due`);
    2. run each claimed job in a process of its own (`processes`: forked,
       so several jobs use several cores), a C-GET job in a thread (see
       below);
    3. wait until one ends, or a second passes (jobs queued meanwhile are
       claimed then), and claim again;
    4. a child that ended while its job still says "running" died: the job
       goes back to the queue (`requeue_dead`).

    With `job_id` only that job is run (`manage.py dicom send|retrieve`).
    Returns the number of jobs run.
    """
    close_old_connections()
    requeue_stale()
    children, ran = JobProcesses(), 0
    try:
        while True:
            while True:
                try:
                    claimed = claim_due(worker_name(), job_id=job_id)
                except DatabaseError as exc:
                    if not len(children):
                        raise
                    # Children are running: keep watching them (a child ends
                    # when this thread does: processes.py).
                    logger.warning("cannot claim transfer jobs now (%s); trying again in a second", exc)
                    claimed = []
                forked = []
                for job in claimed:
                    if job.kind == TransferKind.GET:
                        # A C-GET job stores and indexes every instance: its cost
                        # is the commit's fsync, which one index writer per process
                        # groups across the jobs of its threads; four jobs in four
                        # processes committed one by one, and ×4 got slower.
                        children.start_thread(job, _run_in_thread)
                    else:
                        forked.append((job.pk, children.start(job, _run_in_child)))
                    ran += 1
                _name_processes(forked)
                if not claimed or job_id is not None:
                    break
            if not len(children):
                break
            for child, status in children.wait(1.0):
                if child.pid is None:
                    continue  # a thread: `_run_in_thread` saved the job's end
                try:
                    requeue_dead(child.job_pk, child.pid, status)
                except DatabaseError:  # its row goes stale; requeue_stale takes it back
                    logger.exception("transfer job %s: cannot look at it after its process ended", child.job_pk)
            if job_id is not None and not len(children):
                break
    finally:
        children.close()
    wake_for_retries()
    return ran


def _name_processes(forked):
    """Each row of a forked job names the process that runs it, all in one
    transaction once the children of a claim run (`forked`: (job pk, pid)).
    Each child named itself before, a commit of its own that collided with
    the dispatcher's next claim.  Conditional on the dispatcher's name: a
    child may have finished already, and until then `requeue_dead` takes
    either name."""
    if not forked:
        return
    claimer = worker_name()[:64]
    try:
        with transaction.atomic():
            for pk, pid in forked:
                TransferJob.objects.filter(pk=pk, state=TransferState.RUNNING, worker=claimer).update(
                    worker=process_name(pid)
                )
    except DatabaseError as exc:  # the rows keep the dispatcher's name, which requeue_dead also takes
        logger.warning("cannot name the processes of transfer jobs %s (%s)", [pk for pk, _ in forked], exc)


def _run_in_child(job):
    """A forked child's work (`processes.JobProcesses.start`)."""
    try:
        _run_in_thread(job)
    finally:
        stop_index_writer()


def _run_in_thread(job):
    try:
        run_job(job)
    except Exception:
        logger.exception("transfer job %s crashed", job.pk)
        TransferJob.objects.filter(pk=job.pk, state=TransferState.RUNNING).update(
            state=TransferState.FAILED, finished_at=timezone.now(), last_error="internal error (see the log)"
        )
    finally:
        connection.close()


def requeue_dead(pk, pid, status):
    """The process `pid` that ran job `pk` ended with wait `status`.  A job
    still running there lost its process (killed, out of memory): it goes
    back to the queue at once, as a job whose worker stopped does, and fails
    when the retry delays are used up (a job that kills its process every
    time must not loop).  Returns the job's new state, or None."""
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        lost = TransferJob.objects.filter(
            pk=pk, state=TransferState.RUNNING, worker__in=[process_name(pid), worker_name()[:64]]
        )
        if not lost.exists():
            return None  # the usual end: the child saved the job's state
    job = TransferJob.objects.filter(pk=pk, state=TransferState.RUNNING).first()
    # Conditional on the worker: a dispatcher that found the row stale may
    # have queued it again, and another child may be running it now.
    if job is None or job.worker not in (process_name(pid), worker_name()):
        return None
    how = describe_exit(status)
    if job.cancel_requested:
        state, error = TransferState.CANCELLED, f"cancelled while running (its process {how})"
        extra = dict(finished_at=timezone.now())
    elif retry_delay(job.attempts) is None:
        state = TransferState.FAILED
        error = f"the process running this job {how} (gave up after {job.attempts} attempts)"
        extra = dict(finished_at=timezone.now())
    else:
        state, error = TransferState.QUEUED, f"the process running this job {how}; the job was queued again"
        extra = dict(next_attempt_at=timezone.now())
    done = TransferJob.objects.filter(pk=pk, state=TransferState.RUNNING, worker=job.worker).update(
        state=state, last_error=error, cancel_requested=False, **extra
    )
    if not done:
        return None
    logger.warning("transfer job %s: process %s %s; %s", pk, pid, how, TransferState(state).label)
    return state


def run_job(job):
    """Run a claimed job to its end state (see the module docstring)."""
    run = JobRun(job)
    monitor = Monitor(run)
    monitor.start()
    kind = {TransferKind.SEND: send, TransferKind.MOVE: move, TransferKind.GET: get}[job.kind]
    logger.info("transfer job %s: attempt %d: %s", job.pk, job.attempts, job.description)
    error, state, next_attempt = "", None, None
    try:
        kind(run)
        p = run.progress
        if job.kind != TransferKind.SEND and not p.total and not p.done and not p.failed:
            raise Refused(f"{run.peer.ae_title} found nothing to retrieve for this job")
        if p.failed:
            state = TransferState.PARTLY_FAILED if p.done else TransferState.FAILED
            error = f"{p.failed} instances were not accepted"
        else:
            state = TransferState.SUCCEEDED
    except Cancelled:
        state, error = TransferState.CANCELLED, "cancelled while running"
    except NetworkFailure as exc:
        error = str(exc)
        delay = retry_delay(job.attempts)
        if delay is None:
            state = TransferState.FAILED
            if job.attempts > 1:
                error += f" (gave up after {job.attempts} attempts)"
        else:
            state, next_attempt = TransferState.QUEUED, timezone.now() + delay
    except Refused as exc:
        state, error = TransferState.FAILED, str(exc)
    finally:
        run.abort()
        monitor.stop()
    extra = dict(state=state, last_error=error, cancel_requested=False)
    if next_attempt:
        extra["next_attempt_at"] = next_attempt
    else:
        extra["finished_at"] = timezone.now()
    run.save_progress(**extra)
    logger.info("transfer job %s: %s%s", job.pk, TransferState(state).label, f" ({error})" if error else "")
    if state in (TransferState.SUCCEEDED, TransferState.PARTLY_FAILED) and job.kind != TransferKind.SEND:
        studies_retrieved(run)
    return state
