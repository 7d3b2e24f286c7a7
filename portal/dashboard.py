"""The live dashboard: the staff page, and the feed of what it shows.

The page (`dashboard`) opens a websocket to `portal.consumers.DashboardConsumer`,
which gives it a `Feed`: first a snapshot of the recent rows, then every
~0.5 s what changed since.  The rows come from tables that the listeners
write in their own processes:

- associations opening and closing: AssociationLog (runscp's index writer),
  rows started in the last minute and the ids shown open;
- studies received or retrieved: Event (`pacs_site.events.record`), id > cursor;
- transfer-job progress: TransferJob (the transfer runner), jobs queued or
  running, ids shown unfinished, id > cursor;
- burn-job progress: publishing.BurnJob (publishing's worker), as transfer jobs;
- HL7 messages: HL7Message (runmllp), id > cursor;
- the storage volume's free space (`lifecycle.diskguard`): the page is
  rendered with it; measured again at most every DISK_EVERY seconds and
  sent when its state changes or the free space moved by DISK_STEP of the
  volume.

Each is a query on an indexed column that answers a handful of rows.

Every item is a flat dict with `type` and `id`; the page replaces the row
with the same type and id, so an item sent twice does no harm.
"""

import datetime
import logging
import time

from django.apps import apps
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.db import DatabaseError
from django.db.models import Q
from django.shortcuts import render
from django.utils import timezone

from dicomnodes.lifecycle import diskguard
from dicomnodes.models import AssociationLog, AssociationResult, TransferJob, TransferState
from pacs_site.events import event_item
from pacs_site.models import Event
from portal.models import HttpSettings
from publishing.models import FINAL_STATES
from worklist.models import HL7Message

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.5  # seconds between two polls of one open dashboard
RECENT = 20  # rows of each kind in the snapshot
# An association row is inserted by runscp's index writer a little after the
# association started (group commit): look back this far for new ones.
ASSOCIATION_LOOKBACK = datetime.timedelta(seconds=60)
ACTIVE_JOB_STATES = ("queued", "running")
DISK_EVERY = 5.0  # seconds between two measures of the storage volume by one dashboard
DISK_STEP = 0.01  # of the volume's size: a smaller move of the free space is not sent


@staff_member_required
def dashboard(request):
    context = {
        **admin.site.each_context(request),
        **_header(),
        "title": "Dashboard",
        "is_nav_sidebar_enabled": False,  # the tables need the width
        "burn_jobs": burn_job_model() is not None,
        "disk": disk_item(),
    }
    return render(request, "portal/dashboard.html", context)


def _header():
    try:
        row = HttpSettings.load()
    except DatabaseError:
        return {}
    return {"institution": row.institution, "department": row.department}


def burn_job_model():
    """publishing.BurnJob (None where the publishing app has no such model)."""
    try:
        return apps.get_model("publishing", "BurnJob")
    except LookupError:
        return None


def _final_burn_states():
    return FINAL_STATES


class Feed:
    """What one dashboard has been sent, and the queries for what is new.

    Plain synchronous ORM code: the consumer runs it in a worker thread.
    """

    def __init__(self):
        self.event_cursor = 0
        self.hl7_cursor = 0
        self.job_cursor = 0
        self.burn_cursor = 0
        self.associations = {}  # id -> what was sent (a tuple that changes on close)
        self.jobs = {}  # id -> updated_at sent, for jobs not finished when sent
        self.burns = {}
        self.disk_sent = None  # the disk item last sent
        self.disk_at = None  # time.monotonic() of its measure

    # --- 1. the first screen -------------------------------------------------------
    def snapshot(self):
        items = []
        events = list(Event.objects.order_by("-id")[:RECENT])
        self.event_cursor = max((e.pk for e in events), default=self._max_id(Event))
        items += [event_item(e) for e in reversed(events)]

        messages = list(HL7Message.objects.order_by("-id")[:RECENT])
        self.hl7_cursor = max((m.pk for m in messages), default=self._max_id(HL7Message))
        items += [hl7_item(m) for m in reversed(messages)]

        associations = AssociationLog.objects.filter(
            Q(pk__in=AssociationLog.objects.order_by("-started_at").values("pk")[:RECENT])
            | Q(result=AssociationResult.OPEN, started_at__gte=timezone.now() - datetime.timedelta(days=1))
        ).order_by("started_at")
        items += self._associations_changed(associations)

        self.job_cursor = self._max_id(TransferJob)
        jobs = TransferJob.objects.select_related("peer").filter(
            Q(state__in=ACTIVE_JOB_STATES) | Q(pk__in=TransferJob.objects.order_by("-id").values("pk")[:RECENT])
        )
        items += self._jobs_changed(jobs.order_by("id"), self.jobs, transfer_item)

        burn = burn_job_model()
        if burn is not None:
            self.burn_cursor = self._max_id(burn)
            rows = burn.objects.select_related("publisher").filter(
                ~Q(state__in=_final_burn_states()) | Q(pk__in=burn.objects.order_by("-id").values("pk")[:RECENT])
            )
            items += self._jobs_changed(rows.order_by("id"), self.burns, burn_item)
        self._disk_changed()  # the page was rendered with it: only changes are sent
        return items

    # --- 2. every poll ---------------------------------------------------------------
    def poll(self):
        """Items new or changed since the last snapshot or poll.

        1. events and HL7 messages: ids above the cursor;
        2. associations: those started lately, and those we showed open;
        3. transfer (and burn) jobs: unfinished ones, new ones, and those we
           showed unfinished, sent again when `updated_at` moved.
        """
        items = []
        events = list(Event.objects.filter(pk__gt=self.event_cursor).order_by("id")[:200])
        if events:
            self.event_cursor = events[-1].pk
        items += [event_item(e) for e in events]

        messages = list(HL7Message.objects.filter(pk__gt=self.hl7_cursor).order_by("id")[:200])
        if messages:
            self.hl7_cursor = messages[-1].pk
        items += [hl7_item(m) for m in messages]

        still_open = [pk for pk, sent in self.associations.items() if sent[0] == AssociationResult.OPEN]
        associations = AssociationLog.objects.filter(
            Q(started_at__gte=timezone.now() - ASSOCIATION_LOOKBACK) | Q(pk__in=still_open)
        ).order_by("started_at")
        items += self._associations_changed(associations)
        self._forget_old_associations()

        jobs = TransferJob.objects.select_related("peer").filter(
            Q(state__in=ACTIVE_JOB_STATES) | Q(pk__in=list(self.jobs)) | Q(pk__gt=self.job_cursor)
        )
        changed = self._jobs_changed(jobs.order_by("id"), self.jobs, transfer_item)
        self.job_cursor = max([self.job_cursor, *(item["id"] for item in changed)])
        items += changed

        burn = burn_job_model()
        if burn is not None:
            rows = burn.objects.select_related("publisher").filter(
                ~Q(state__in=_final_burn_states()) | Q(pk__in=list(self.burns)) | Q(pk__gt=self.burn_cursor)
            )
            changed = self._jobs_changed(rows.order_by("id"), self.burns, burn_item)
            self.burn_cursor = max([self.burn_cursor, *(item["id"] for item in changed)])
            items += changed
        return items + self._disk_changed()

    def is_new_event(self, event_id):
        """For an event pushed over the channel layer: not sent by a poll yet?
        Moves the cursor past it so that the next poll does not send it again
        (a row committed later with a lower id still shows, in the snapshot
        of the next page load)."""
        if event_id <= self.event_cursor:
            return False
        self.event_cursor = event_id
        return True

    # --- helpers -----------------------------------------------------------------------
    def _disk_changed(self):
        """[the disk item] when DISK_EVERY has passed and it changed enough."""
        now = time.monotonic()
        if self.disk_at is not None and now - self.disk_at < DISK_EVERY:
            return []
        self.disk_at = now
        item, sent = disk_item(), self.disk_sent
        if sent is not None and item["state"] == sent["state"]:
            if abs(item.get("free", 0) - sent.get("free", 0)) < DISK_STEP * item.get("total", 0):
                return []
        self.disk_sent = item
        return [item]

    @staticmethod
    def _max_id(model):
        row = model.objects.order_by("-id").values_list("id", flat=True).first()
        return row or 0

    def _associations_changed(self, rows):
        items = []
        for row in rows:
            key = str(row.pk)
            sent = (row.result, row.ended_at, row.instances_received, row.started_at)
            if self.associations.get(key) != sent:
                self.associations[key] = sent
                items.append(association_item(row))
        return items

    def _forget_old_associations(self):
        horizon = timezone.now() - ASSOCIATION_LOOKBACK
        for key, sent in list(self.associations.items()):
            if sent[0] != AssociationResult.OPEN and sent[3] < horizon:
                del self.associations[key]

    @staticmethod
    def _jobs_changed(rows, watched, to_item):
        items = []
        for row in rows:
            stamp = getattr(row, "updated_at", None) or object()
            if watched.get(row.pk) == stamp:
                continue
            item = to_item(row)
            items.append(item)
            if item["finished"]:
                watched.pop(row.pk, None)
            else:
                watched[row.pk] = stamp
        return items


# --- rows as items ---------------------------------------------------------------------


def _iso(value):
    return value.isoformat() if value else None


def association_item(row):
    return {
        "type": "association",
        "id": str(row.pk),
        "at": _iso(row.started_at),
        "ended_at": _iso(row.ended_at),
        "calling_ae": row.calling_ae,
        "called_ae": row.called_ae,
        "peer_address": row.peer_address,
        "instances_received": row.instances_received,
        "instances_failed": row.instances_failed,
        "bytes_received": row.bytes_received,
        "duration": row.duration,
        "result": row.result,
        "result_label": row.get_result_display(),
        "reason": row.reason,
        "open": row.result == AssociationResult.OPEN,
    }


def transfer_item(job):
    return {
        "type": "transfer",
        "id": job.pk,
        "at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "kind": job.get_kind_display(),
        "peer": job.peer.name,
        "description": job.description,
        "state": job.state,
        "state_label": job.get_state_display(),
        "done": job.done,
        "failed": job.failed,
        "total": job.total,
        "rate": job.rate,
        "progress": job.progress_text(),
        "last_error": job.last_error[:200],
        "finished": job.state not in (TransferState.QUEUED, TransferState.RUNNING),
    }


def burn_item(job):
    return {
        "type": "burn",
        "id": job.pk,
        "at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "kind": job.get_kind_display(),
        "trigger": job.get_trigger_display(),
        "publisher": job.publisher.name if job.publisher else "",
        "state": job.state,
        "state_label": job.get_state_display(),
        "due_at": _iso(job.due_at),
        "good_discs": job.good_discs,
        "bad_discs": job.bad_discs,
        "message": job.message[:200],
        "finished": job.state in _final_burn_states(),
    }


def disk_item():
    """The storage volume: free space, the guard's minimum, and a warning
    near it (state "low": stores are refused; "near": within twice the minimum)."""
    try:
        status = diskguard.measure()
    except (OSError, DatabaseError) as exc:
        return {"type": "disk", "id": "storage", "state": "unknown", "text": f"cannot measure: {exc}", "warning": ""}
    state = "low" if status.is_low() else "near" if status.is_near() else "ok"
    return {
        "type": "disk",
        "id": "storage",
        "state": state,
        "text": status.summary(),
        "warning": status.warning(),
        "free": status.free,
        "total": status.total,
        "threshold": status.threshold,
    }


def hl7_item(message):
    return {
        "type": "hl7",
        "id": message.pk,
        "at": _iso(message.received_at),
        "message_type": message.message_type,
        "control_id": message.control_id,
        "sending_application": message.sending_application,
        "summary": message.summary,
        "outcome": message.outcome,
        "outcome_label": message.get_outcome_display(),
        "ack_code": message.ack_code,
    }
