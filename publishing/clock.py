"""Publishing's clock in runscp: delayed jobs submitted at their due time,
robot status read every few seconds while discs are on a robot.

django-q2's scheduler looks at its schedules only every 30 s, and the
worker's tick (publishing.tasks.tick) runs once a minute; alone they would
start a `_TE`/`_TP` job up to 30 s after its due time and show a finished
disc a minute or more late.  runscp runs all the time (also idle, with the
DICOM port at 0) and its index writer is what pushes due times, so each
runscp process that calls `enable()` keeps one thread that

* queues a delayed job's submission at its due time (`arm()`, called by the
  trigger after its commit; at start, for every job already collecting).  The task claims the job only if it is still
  due (a conditional update), so a timer for a due time that a later series
  pushed does nothing; that push armed a later timer, in whichever runscp
  process received the series;
* reads the robots' status every `ROBOT_POLL_SECONDS` while a job is
  submitted or burning (publishing.tasks.poll_robots: a few small files and
  conditional updates; two processes reading at once agree).

The django-q2 schedules stay as the safety net for a runscp that is stopped.
Elsewhere (the web, the worker, tests) `arm()` does nothing.
"""

import heapq
import logging
import threading
import time

from django.db import close_old_connections
from django.utils import timezone

from publishing import tasks
from publishing.models import ACTIVE_STATES, BurnJob, JobState
from publishing.queueing import queue_submit

logger = logging.getLogger(__name__)

ROBOT_POLL_SECONDS = 5.0

_cond = threading.Condition()
_heap = []  # (due, pk)
_latest = {}  # pk -> the latest due time armed for it
_enabled = False
_thread = None


def on_scp_started(sender, **kwargs):
    """Receiver of dicomnodes.signals.scp_started: every runscp process keeps the clock."""
    enable()


def enable(*, robot_poll=ROBOT_POLL_SECONDS):
    """Start the clock in this process (runscp)."""
    global _enabled, _thread
    with _cond:
        _enabled = True
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, args=(robot_poll,), name="publishing-clock", daemon=True)
            _thread.start()


def disable():
    """Stop the clock (the thread ends; pending timers are dropped)."""
    global _enabled, _thread
    with _cond:
        _enabled = False
        _heap.clear()
        _latest.clear()
        _cond.notify_all()
        thread, _thread = _thread, None
    if thread is not None and thread is not threading.current_thread():
        thread.join(5)


def arm(pk, due) -> bool:
    """Queue the submit task of burn job `pk` at `due` (an aware datetime)."""
    if not _enabled:
        return False
    with _cond:
        _latest[pk] = due
        heapq.heappush(_heap, (due, pk))
        _cond.notify()
    return True


def pending():
    """{pk: due} of the timers not fired yet."""
    with _cond:
        return dict(_latest)


def _next_due(until):
    """The pk of a job whose due time has come, or None at `until` (monotonic)."""
    with _cond:
        while _enabled:
            if _heap:
                due, pk = _heap[0]
                if _latest.get(pk) != due:  # pushed since: a later entry stands for it
                    heapq.heappop(_heap)
                    continue
                wait = (due - timezone.now()).total_seconds()
                if wait <= 0:
                    heapq.heappop(_heap)
                    del _latest[pk]
                    return pk
            else:
                wait = None
            left = until - time.monotonic()
            if left <= 0:
                return None
            _cond.wait(left if wait is None else min(wait, left))
        raise _Stopped


def _arm_collecting():
    """Timers for the jobs already collecting (runscp restarted between two series)."""
    try:
        close_old_connections()
        for pk, due in BurnJob.objects.filter(state=JobState.COLLECTING).values_list("pk", "due_at"):
            if due is not None and pk not in _latest:
                arm(pk, due)
    except Exception as exc:  # the schedules still submit them
        logger.warning("publishing clock: cannot read the collecting burn jobs (%s)", exc)


class _Stopped(Exception):
    pass


def _run(robot_poll):
    _arm_collecting()
    next_poll = time.monotonic() + robot_poll
    while True:
        try:
            pk = _next_due(next_poll)
        except _Stopped:
            return
        try:
            close_old_connections()
            if pk is not None:
                queue_submit(pk)
                logger.debug("burn job %s is due: submit queued", pk)
                continue
            next_poll = time.monotonic() + robot_poll
            if BurnJob.objects.filter(state__in=ACTIVE_STATES).exists():
                tasks.poll_robots()
        except Exception:  # the worker's schedules and tick still do it
            logger.exception("publishing clock: %s failed", f"queueing burn job {pk}" if pk else "reading the robots")
