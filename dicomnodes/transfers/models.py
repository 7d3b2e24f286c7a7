"""Outgoing transfers as queued jobs (imported into `dicomnodes.models`).

A job sends instances to a peer with C-STORE, or retrieves them from a peer
with C-MOVE (to our AE title, or another destination) or C-GET.  The runner
is `dicomnodes/transfers.py`; what is delivered is remembered per instance
so that a retry never sends an instance twice.
"""

from django.conf import settings
from django.db import models
from django.utils import timezone


class TransferKind(models.TextChoices):
    SEND = "send", "send (C-STORE)"
    MOVE = "move", "retrieve (C-MOVE)"
    GET = "get", "retrieve (C-GET)"


class TransferLevel(models.TextChoices):
    STUDY = "STUDY", "study"
    SERIES = "SERIES", "series"
    IMAGE = "IMAGE", "instance"


class TransferState(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    PARTLY_FAILED = "partly_failed", "partly failed"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


FINISHED_STATES = (
    TransferState.SUCCEEDED,
    TransferState.PARTLY_FAILED,
    TransferState.FAILED,
    TransferState.CANCELLED,
)


class TransferJob(models.Model):
    kind = models.CharField(max_length=8, choices=TransferKind.choices)
    peer = models.ForeignKey("dicomnodes.Peer", on_delete=models.PROTECT, related_name="transfer_jobs")
    level = models.CharField(max_length=8, choices=TransferLevel.choices, default=TransferLevel.STUDY)
    # What: the UIDs at `level`.  For SERIES and IMAGE levels of a retrieve,
    # `study_uid` (and `series_uid`) say where they belong (PS3.4 C.4.2.2.1).
    uids = models.JSONField(default=list)
    study_uid = models.CharField("Study Instance UID", max_length=64, blank=True)
    series_uid = models.CharField("Series Instance UID", max_length=64, blank=True)
    move_destination = models.CharField(
        "C-MOVE destination", max_length=16, blank=True, help_text="Blank: our own AE title."
    )
    description = models.CharField(max_length=255, blank=True)

    state = models.CharField(max_length=16, choices=TransferState.choices, default=TransferState.QUEUED, db_index=True)
    total = models.PositiveIntegerField("instances in all", null=True, blank=True)
    done = models.PositiveIntegerField("instances done", default=0)
    failed = models.PositiveIntegerField("instances failed", default=0)
    bytes = models.BigIntegerField(default=0)
    rate = models.FloatField("rate (instances/s)", null=True, blank=True)
    # SOP Instance UIDs delivered (send) or received (retrieve) so far:
    # a retry leaves them out.
    delivered = models.JSONField(default=list, blank=True)
    failed_uids = models.JSONField(default=list, blank=True)

    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    worker = models.CharField(max_length=64, blank=True, help_text="The process running the job.")
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at", "id"])]

    def __str__(self):
        return f"#{self.pk} {self.get_kind_display()} {self.peer}"

    def is_finished(self):
        return self.state in FINISHED_STATES

    def progress_text(self):
        if self.total is None:
            return f"{self.done} done" if self.done else ""
        text = f"{self.done}/{self.total}"
        if self.failed:
            text += f", {self.failed} failed"
        return text

    def queue_position(self):
        """1 for the next job to start; None unless queued."""
        if self.state != TransferState.QUEUED:
            return None
        ahead = TransferJob.objects.filter(state=TransferState.QUEUED, id__lt=self.id).count()
        return ahead + 1
