"""Delayed (`_TE`/`_TP`) burn jobs submitted at their due time, not up to 30 s later.

A delayed job gets a django-q2 schedule at its due time (publishing.tasks),
but django-q2's scheduler looks at its schedules only every 30 s.  So the
process that pushes a due time (runscp, whose index writer runs the
triggers) also keeps a timer: when the time comes it queues the submit task
at once, and the worker picks it up within its broker poll.

The task claims the job only if it is still due (a conditional update), so a
timer that fires for a due time another series has pushed since does
nothing; the push armed a later timer, in whichever runscp process received
that series.  The schedule stays as the safety net for a runscp stopped
before the due time.

Only processes that call `enable()` (runscp) keep timers; elsewhere `arm()`
does nothing and the schedule alone submits.
"""

import heapq
import logging
import threading

from django.db import close_old_connections
from django.utils import timezone

logger = logging.getLogger(__name__)

_cond = threading.Condition()
_heap = []  # (due, pk)
_latest = {}  # pk -> the latest due time armed for it
_enabled = False
_thread = None


def enable():
    global _enabled
    _enabled = True


def arm(pk, due) -> bool:
    """Queue the submit task of burn job `pk` at `due` (an aware datetime)."""
    global _thread
    if not _enabled:
        return False
    with _cond:
        _latest[pk] = due
        heapq.heappush(_heap, (due, pk))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="burn-job-timer", daemon=True)
            _thread.start()
        _cond.notify()
    return True


def pending():
    """{pk: due} of the timers not fired yet."""
    with _cond:
        return dict(_latest)


def _next_due():
    """Wait for the earliest timer; returns its job's pk once it is due."""
    with _cond:
        while True:
            if not _heap:
                _cond.wait()
                continue
            due, pk = _heap[0]
            if _latest.get(pk) != due:  # pushed since: a later entry stands for it
                heapq.heappop(_heap)
                continue
            wait = (due - timezone.now()).total_seconds()
            if wait > 0:
                _cond.wait(wait)
                continue
            heapq.heappop(_heap)
            del _latest[pk]
            return pk


def _run():
    from publishing import tasks

    while True:
        pk = _next_due()
        try:
            close_old_connections()
            tasks.queue_submit(pk)
            logger.debug("burn job %s is due: submit queued", pk)
        except Exception:  # the schedule will still submit it
            logger.exception("burn job %s: could not queue its submission; its schedule will", pk)
