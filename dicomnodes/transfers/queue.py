"""The low-level half of the transfer queue: waking the runner, claiming
jobs, requeueing lost ones, retry times.  `jobs` (submit, cancel, run) and
`runner` build on it; it imports neither.

The queue is the TransferJob table; django-q2 supplies the workers (see
`dicomnodes.transfers.jobs`).
"""

import datetime
import logging
import os
import socket
import threading
import uuid

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task, schedule

from dicomnodes.models import DicomServerSettings, TransferJob, TransferState
from dicomnodes.validators import parse_delays

logger = logging.getLogger(__name__)

RUN_TASK = "dicomnodes.transfers.jobs.run_next"
# A running job's monitor writes a heartbeat every second; a job whose
# heartbeat is older than this lost its worker (killed, machine restarted)
# and goes back to the queue.
STALE_AFTER = datetime.timedelta(seconds=60)


def kick():
    """Ask a django-q2 worker to run queued jobs (never fails the caller)."""
    try:
        async_task(RUN_TASK, task_name=f"transfers-{uuid.uuid4().hex[:12]}")
    except Exception:
        logger.exception("could not queue the transfer runner; the minute schedule will start it")


def worker_name():
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{threading.get_ident() % 100000}"


def claim_next(worker, *, job_id=None):
    """Claim the first due queued job if fewer than the maximum run; None
    otherwise (`claim_due` for one job)."""
    claimed = claim_due(worker, job_id=job_id, most=1)
    return claimed[0] if claimed else None


def claim_due(worker, *, job_id=None, most=None):
    """Claim the due queued jobs, first come first served, while fewer than
    the maximum run (at most `most` of them); a list, maybe empty.  With
    `job_id`, claim only that job, and only when it is the first in the
    queue (first come, first served).

    One transaction for all of them: a dispatcher that claimed four jobs
    one by one committed four times, and each commit (an fsync) collided
    with the first child's write, so four jobs started over 150-250 ms
    (bench/transfer.py send small×4, TransferJob.started_at).

    The limit check and the claims happen in one transaction that first
    locks the settings row (PostgreSQL; SQLite's write transactions are
    serial anyway), so two workers cannot both take the last free slot.  The
    conditional update on the state is what keeps two workers from running
    the same job (and a job cancelled meanwhile from starting).
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
        free = limit - TransferJob.objects.filter(state=TransferState.RUNNING).count()
        if most is not None:
            free = min(free, most)
        if free <= 0:
            return []
        heads = list(
            TransferJob.objects.filter(state=TransferState.QUEUED, next_attempt_at__lte=now)
            .order_by("id")
            .values_list("pk", flat=True)[:free]
        )
        if job_id is not None:
            heads = heads[:1] if heads and heads[0] == job_id else []
        claimed = [
            pk
            for pk in heads
            if TransferJob.objects.filter(pk=pk, state=TransferState.QUEUED).update(
                state=TransferState.RUNNING,
                worker=worker[:64],
                heartbeat_at=now,
                started_at=now,
                cancel_requested=False,
                attempts=F("attempts") + 1,
            )
            == 1
        ]
    return list(TransferJob.objects.filter(pk__in=claimed).order_by("id")) if claimed else []


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


def retry_delay(attempts):
    """The wait before attempt `attempts + 1`, or None when the retries are used up."""
    delays = parse_delays(DicomServerSettings.load().retry_delays)
    if attempts - 1 < len(delays):
        return datetime.timedelta(seconds=delays[attempts - 1])
    return None


def wake_due_retries(since):
    """Kick the runner when a queued job's retry time passed since `since`.

    runscp's main loop calls this at every settings poll (2 s): the one-off
    django-q2 schedule of `wake_for_retries` alone would run a retry up to
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


def wake_for_retries():
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
        name = f"transfers-retry-{nxt:%Y%m%d%H%M%S}"
        if not Schedule.objects.filter(name=name).exists():
            schedule(RUN_TASK, name=name, schedule_type=Schedule.ONCE, next_run=nxt)
    except Exception:
        logger.exception("could not schedule the next transfer retry; the minute schedule will run it")
