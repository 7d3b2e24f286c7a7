"""Outgoing transfer jobs: submit, claim, run, retry, cancel.

The queue is the TransferJob table.  django-q2 supplies the workers:

- `submit_job()` saves a queued job and, after the commit, queues the task
  `run_next` (`kick()`);
- `run_next()` (a django-q2 task; also called by `manage.py dicom send|
  retrieve` and scheduled every minute as a safety net) claims queued jobs
  first come first served while fewer than "maximum outgoing connections"
  jobs run, runs each claimed job in a thread of its own, and claims again
  whenever one ends.  So the limit holds across every worker process and
  does not depend on how many django-q2 workers there are, and a changed
  setting applies at the next claim;
- a job that fails for a network reason goes back to the queue with
  `next_attempt_at` set from the retry delays; runscp's main loop kicks
  `run_next` within its 2 s poll once that time passes, and a one-off
  django-q2 schedule does too (up to 30 s late: the safety net when runscp
  is stopped);
- `cancel_job()` cancels a queued job at once, and asks a running one to stop:
  its monitor thread sees the flag within a second and aborts the
  association.

The network side of one job is `dicomnodes/transfer_runner.py`.
"""

import datetime
import logging
import os
import socket
import threading
import uuid

from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone
from pydicom.uid import UID

from dicomnodes.models import (
    DicomServerSettings,
    Instance,
    Peer,
    TransferJob,
    TransferKind,
    TransferLevel,
    TransferState,
)
from dicomnodes.validators import is_valid_ae_title, parse_delays

logger = logging.getLogger(__name__)

RUN_TASK = "dicomnodes.transfers.jobs.run_next"
# A running job's monitor writes a heartbeat every second; a job whose
# heartbeat is older than this lost its worker (killed, machine restarted)
# and goes back to the queue.
STALE_AFTER = datetime.timedelta(seconds=60)


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
        total = instances_for(level, uids).count()
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
    from dicomnodes.models import Study

    row = Study.objects.filter(study_instance_uid=uid).values("study_date", "modalities_in_study").first()
    if not row:
        return ""
    return f"{row['study_date'] or '(no date)'} {row['modalities_in_study']}".strip()


def instances_for(level, uids):
    lookup = {
        TransferLevel.STUDY: "series__study__study_instance_uid__in",
        TransferLevel.SERIES: "series__series_instance_uid__in",
        TransferLevel.IMAGE: "sop_instance_uid__in",
    }[level]
    return Instance.objects.filter(**{lookup: uids})


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


def kick():
    """Ask a django-q2 worker to run queued jobs (never fails the caller)."""
    try:
        from django_q.tasks import async_task

        async_task(RUN_TASK, task_name=f"transfers-{uuid.uuid4().hex[:12]}")
    except Exception:
        logger.exception("could not queue the transfer runner; the minute schedule will start it")


# --- claiming -------------------------------------------------------------------------


def worker_name():
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{threading.get_ident() % 100000}"


def claim_next(worker, *, job_id=None):
    """Claim the first due queued job if fewer than the maximum run; None
    otherwise.  With `job_id`, claim only that job, and only when it is the
    first in the queue (first come, first served).

    The limit check and the claim happen in one transaction that first
    locks the settings row (PostgreSQL; SQLite's write transactions are
    serial anyway), so two workers cannot both take the last free slot.  The
    conditional update on the state is what keeps two workers from running
    the same job.
    """
    now = timezone.now()
    with transaction.atomic():
        limit = (
            DicomServerSettings.objects.select_for_update()
            .filter(pk=1)
            .values_list("max_outgoing_connections", flat=True)
            .first()
            or DicomServerSettings.load().max_outgoing_connections
        )
        if TransferJob.objects.filter(state=TransferState.RUNNING).count() >= limit:
            return None
        head = (
            TransferJob.objects.filter(state=TransferState.QUEUED, next_attempt_at__lte=now)
            .order_by("id")
            .values_list("pk", flat=True)
            .first()
        )
        if head is None or (job_id is not None and head != job_id):
            return None
        claimed = TransferJob.objects.filter(pk=head, state=TransferState.QUEUED).update(
            state=TransferState.RUNNING,
            worker=worker[:64],
            heartbeat_at=now,
            started_at=now,
            cancel_requested=False,
            attempts=F("attempts") + 1,
        )
        if claimed != 1:
            return None
    return TransferJob.objects.get(pk=head)


def requeue_stale():
    """Jobs whose worker died go back to the queue (their delivered
    instances are kept, so nothing is sent twice)."""
    cutoff = timezone.now() - STALE_AFTER
    n = TransferJob.objects.filter(state=TransferState.RUNNING, heartbeat_at__lt=cutoff).update(
        state=TransferState.QUEUED,
        next_attempt_at=timezone.now(),
        last_error="the worker running this job stopped; the job was queued again",
    )
    if n:
        logger.warning("%d transfer jobs lost their worker and were queued again", n)
    return n


# --- running ----------------------------------------------------------------------------


def run_next(*, job_id=None):
    """Claim and run jobs until none can be claimed and none runs here.

    Each claimed job runs in its own thread; whenever one ends, claiming
    starts again (a slot came free).  With `job_id` only that job is run
    (`manage.py dicom send|retrieve`).  Returns the number of jobs run.
    """
    close_old_connections()
    requeue_stale()
    running, ran = {}, 0
    finished = threading.Event()
    while True:
        while True:
            job = claim_next(worker_name(), job_id=job_id)
            if job is None:
                break
            thread = threading.Thread(
                target=_run_in_thread, args=(job, finished), name=f"transfer-{job.pk}", daemon=True
            )
            running[job.pk] = thread
            thread.start()
            ran += 1
            if job_id is not None:
                break
        if not running:
            break
        finished.wait(1.0)
        finished.clear()
        for pk in [pk for pk, t in running.items() if not t.is_alive()]:
            running.pop(pk).join()
        if job_id is not None and not running:
            break
    _wake_for_retries()
    return ran


def _run_in_thread(job, finished):
    from dicomnodes.transfers.runner import run_job

    try:
        run_job(job)
    except Exception:
        logger.exception("transfer job %s crashed", job.pk)
        TransferJob.objects.filter(pk=job.pk, state=TransferState.RUNNING).update(
            state=TransferState.FAILED, finished_at=timezone.now(), last_error="internal error (see the log)"
        )
    finally:
        connection.close()
        finished.set()


def retry_delay(attempts):
    """The wait before attempt `attempts + 1`, or None when the retries are used up."""
    delays = parse_delays(DicomServerSettings.load().retry_delays)
    if attempts - 1 < len(delays):
        return datetime.timedelta(seconds=delays[attempts - 1])
    return None


def wake_due_retries(since):
    """Kick the runner when a queued job's retry time passed since `since`.

    runscp's main loop calls this at every settings poll (2 s): the one-off
    django-q2 schedule of `_wake_for_retries` alone would run a retry up to
    30 s late (django-q2 looks at schedules every 30 s).  Returns the time
    to pass as `since` next time."""
    now = timezone.now()
    try:
        due = (
            TransferJob.objects.filter(
                state=TransferState.QUEUED, next_attempt_at__gt=since, next_attempt_at__lte=now, attempts__gt=0
            )
            .values_list("pk", flat=True)
            .first()
        )
    except Exception as exc:  # the database briefly away: the schedules still run it
        logger.warning("cannot look for due transfer retries (%s)", exc)
        return since
    if due is not None:
        kick()
    return now


def _wake_for_retries():
    """A one-off django-q2 schedule for the earliest retry still to come."""
    nxt = (
        TransferJob.objects.filter(state=TransferState.QUEUED, next_attempt_at__gt=timezone.now())
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    if nxt is None:
        return
    try:
        from django_q.models import Schedule
        from django_q.tasks import schedule

        name = f"transfers-retry-{nxt:%Y%m%d%H%M%S}"
        if not Schedule.objects.filter(name=name).exists():
            schedule(RUN_TASK, name=name, schedule_type=Schedule.ONCE, next_run=nxt)
    except Exception:
        logger.exception("could not schedule the next transfer retry; the minute schedule will run it")
