"""Queueing the publishing tasks: the low-level half that the triggers (new
images), the clock (runscp's timers) and the tasks themselves all use; it
imports none of them."""

from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task

from publishing.models import PublisherKind

SUBMIT_TASK = "publishing.tasks.submit"
TICK_TASK = "publishing.tasks.tick"
RETRY_WAITING_TASK = "publishing.tasks.retry_waiting"
TICK_NAME = "publishing-tick"


def queue_submit(pk):
    ensure_tick()
    async_task(SUBMIT_TASK, pk)


def schedule_submit(pk, due):
    """A one-off schedule at the job's due time (moved when a series pushes it)."""
    ensure_tick()
    name = f"publishing-job-{pk}"
    if not Schedule.objects.filter(name=name).update(next_run=due, repeats=-1):
        Schedule.objects.create(
            name=name, func=SUBMIT_TASK, args=repr((pk,)), schedule_type=Schedule.ONCE, next_run=due
        )


def ensure_tick():
    """The every-minute tick, created on first use (it lives in the database)."""
    Schedule.objects.get_or_create(
        name=TICK_NAME,
        defaults=dict(func=TICK_TASK, schedule_type=Schedule.MINUTES, minutes=1, repeats=-1, next_run=timezone.now()),
    )


def no_publisher_message(kind) -> str:
    label = PublisherKind(kind).label
    return (
        f"No enabled default {label} publisher is configured. The images are stored; this job waits "
        f"and is submitted once one is added in Publishing › Publishers (or cancel it)."
    )


