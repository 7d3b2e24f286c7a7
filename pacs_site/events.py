"""Record an event for the web UI (see `pacs_site.models.Event`).

Recording never fails the work that caused it: a failure is logged.

How an event reaches an open dashboard (`portal/consumers.py`):

1. It is a row: every process (runscp, runmllp, the django-q2 workers, the
   web server) can write one, and the dashboard polls for rows newer than
   the last one it showed.  This works on the embedded default, where the
   channel layer lives in the web server's memory and other processes
   cannot reach it.
2. With `REDIS_URL` set the channel layer is channels-redis, which every
   process shares: `record()` then also sends the event to the "dashboard"
   group once the row is committed, and it shows at once instead of at the
   next poll.  The dashboard drops whichever copy comes second.
"""

import datetime
import logging
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from dicomnodes.models import Study
from pacs_site.models import Event

logger = logging.getLogger(__name__)

# The channel-layer group every open dashboard joins.
DASHBOARD_GROUP = "dashboard"


def record(kind, message, *, study_instance_uid="", open_study=False, **data):
    try:
        event = Event.objects.create(
            kind=kind,
            message=message[:255],
            study_instance_uid=study_instance_uid,
            open_study=open_study,
            data=data,
        )
    except Exception:
        logger.exception("could not record the event %r", kind)
        return None
    if shared_channel_layer():
        # After commit: a dashboard that gets the message can read the row.
        transaction.on_commit(lambda: push(event))
    return event


def shared_channel_layer():
    """Does the channel layer reach other processes (channels-redis)?"""
    backend = settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", "")
    return backend.startswith("channels_redis.")


def push(event):
    """Send one event to the dashboards over the channel layer; a failure
    (Redis down) is logged: the dashboards still get it by polling."""
    try:
        layer = get_channel_layer()
        async_to_sync(layer.group_send)(DASHBOARD_GROUP, {"type": "dashboard.event", "item": event_item(event)})
    except Exception as exc:
        logger.warning("event %s not pushed to the dashboards (%s); they will poll it", event.pk, exc)


def event_item(event):
    """An event as the dashboard shows it (JSON-ready)."""
    return {
        "type": "event",
        "id": event.pk,
        "at": event.created_at.isoformat(),
        "kind": event.kind,
        "message": event.message,
        "study_instance_uid": event.study_instance_uid,
        "open_study": event.open_study,
        "study_url": study_url(event),
        "viewer_url": viewer_url(event),
    }


def viewer_url(event):
    """Where the dashboard shows the event's study: the viewer (portal/viewer)."""
    if not event.study_instance_uid:
        return ""
    try:
        return reverse("viewer:study") + "?" + urlencode({"StudyInstanceUIDs": event.study_instance_uid})
    except NoReverseMatch:  # the viewer's URLs are not installed
        return ""


def study_url(event):
    """Where the dashboard opens the event's study: its page in the admin."""
    study_id = (event.data or {}).get("study_id")
    if study_id is None and event.study_instance_uid:
        study_id = (
            Study.objects.filter(study_instance_uid=event.study_instance_uid).values_list("pk", flat=True).first()
        )
    if study_id is None:
        return ""
    try:
        return reverse("admin:dicomnodes_study_change", args=[study_id])
    except NoReverseMatch:  # pragma: no cover - the admin is always installed
        return ""


KEEP_DAYS = 30


def prune(days=KEEP_DAYS):
    """Delete events older than `days` (a daily django-q2 schedule); returns how many."""
    cutoff = timezone.now() - datetime.timedelta(days=days)
    deleted, _ = Event.objects.filter(created_at__lt=cutoff).delete()
    if deleted:
        logger.info("deleted %d events older than %d days", deleted, days)
    return deleted
