"""Events the web UI shows: studies received or retrieved, and the like.

The listeners (runscp, runmllp, the django-q2 workers) run in other processes
than the web server, so an event is a row: every process can write one, and
the dashboard reads the rows newer than the last one it showed (see
`pacs_site/events.py`).  The retention settings bound what grows by itself.
"""

from django.db import models
from django.utils import timezone

from pacs_site.singleton import SingletonModel


class EventKind(models.TextChoices):
    STUDY_RECEIVED = "study.received", "study received"
    STUDY_RETRIEVED = "study.retrieved", "study retrieved"


class Event(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=32, choices=EventKind.choices, db_index=True)
    message = models.CharField(max_length=255)
    study_instance_uid = models.CharField("Study Instance UID", max_length=64, blank=True, db_index=True)
    # The setting "open transferred studies when received" as it was when the
    # event happened: the dashboard opens the study by itself when it is set.
    open_study = models.BooleanField(default=False)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.message}"


class AuditOutcome(models.IntegerChoices):
    """PS3.15 A.5 EventOutcomeIndicator."""

    SUCCESS = 0, "success"
    MINOR_FAILURE = 4, "minor failure"
    SERIOUS_FAILURE = 8, "serious failure"
    MAJOR_FAILURE = 12, "major failure"


class AuditEvent(models.Model):
    """Who saw or changed what (pacs_site/audit.py writes them)."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    action = models.CharField(max_length=32, db_index=True)
    outcome = models.PositiveSmallIntegerField(choices=AuditOutcome.choices, default=AuditOutcome.SUCCESS)
    # user name, calling AE title, "link 42", "rule: old CR", "system"
    actor = models.CharField(max_length=150, blank=True, db_index=True)
    actor_kind = models.CharField(max_length=16, blank=True)  # user, ae, link, system
    address = models.CharField(max_length=64, blank=True)
    patient_id = models.CharField(max_length=64, blank=True, db_index=True)
    study_instance_uid = models.CharField("Study Instance UID", max_length=64, blank=True, db_index=True)
    description = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit event"

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.action} {self.actor}"


class RetentionSettings(SingletonModel):
    """How long what grows by itself is kept (pacs_site/retention.py prunes
    it daily).  0 means no limit of that kind."""

    quarantine_days = models.PositiveIntegerField(
        "quarantine: days",
        default=90,
        help_text="Delete quarantined files (data that could not be understood) older than this. 0: no age limit.",
    )
    quarantine_max_mb = models.PositiveIntegerField(
        "quarantine: MB",
        default=1024,
        help_text="Keep the quarantine folder under this size, the oldest files go first. 0: no size limit.",
    )
    preview_days = models.PositiveIntegerField(
        "preview cache: days",
        default=30,
        help_text="Delete cached series previews older than this (they are rendered again when asked for). "
        "0: no age limit.",
    )
    preview_max_mb = models.PositiveIntegerField(
        "preview cache: MB",
        default=512,
        help_text="Keep the preview cache under this size, the oldest first. 0: no size limit.",
    )
    hl7_message_days = models.PositiveIntegerField(
        "HL7 message text: days",
        default=90,
        help_text="Blank the text of HL7 messages (patient data) received or sent longer ago than this; the log "
        "rows, their outcome and the worklist items stay. 0: keep the text.",
    )
    association_log_days = models.PositiveIntegerField(
        "association log: days",
        default=180,
        help_text="Delete association log rows older than this (instances keep their data). 0: no age limit.",
    )
    association_log_max_rows = models.PositiveIntegerField(
        "association log: rows",
        default=200_000,
        help_text="Keep at most this many association log rows, the newest (a flood of rejected associations "
        "cannot grow the table without bound). 0: no limit.",
    )
    event_days = models.PositiveIntegerField(
        "dashboard events: days", default=30, help_text="Delete dashboard events older than this. 0: no age limit."
    )

    class Meta:
        verbose_name = "retention settings"
        verbose_name_plural = "retention settings"

    def __str__(self):
        return "Retention settings"


class SyslogTransport(models.TextChoices):
    TCP = "tcp", "TCP (RFC 6587, octet counting)"
    TLS = "tls", "TLS (RFC 5425)"


class AuditSettings(SingletonModel):
    """What the audit trail records, how long it keeps it, and where it
    forwards it (pacs_site/audit.py, pacs_site/syslog.py)."""

    query_patient_keys = models.BooleanField(
        "patient identifiers in query events",
        default=False,
        help_text="Record the PatientID, PatientName and PatientBirthDate keys of C-FIND and QIDO-RS requests "
        "(off: the other keys only).",
    )
    retention_days = models.PositiveIntegerField(
        "keep events: days", default=365, help_text="Delete audit events older than this. 0: keep them all."
    )
    syslog_enabled = models.BooleanField(
        "forward to syslog",
        default=False,
        help_text="Send each event as an RFC 5424 message carrying the DICOM audit message (PS3.15 A.5).",
    )
    syslog_host = models.CharField("syslog host", max_length=255, blank=True)
    syslog_port = models.PositiveIntegerField("syslog port", default=6514)
    syslog_transport = models.CharField(
        "syslog transport", max_length=8, choices=SyslogTransport.choices, default=SyslogTransport.TLS
    )
    syslog_ca_file = models.CharField(
        "syslog CA file",
        max_length=500,
        blank=True,
        help_text="TLS: the CA certificate(s) (PEM) the collector's certificate is checked against. "
        "Empty: the system's CAs.",
    )

    class Meta:
        verbose_name = "audit settings"
        verbose_name_plural = "audit settings"

    def __str__(self):
        return "Audit settings"

    def clean(self):
        from django.core.exceptions import ValidationError

        if self.syslog_enabled and not self.syslog_host:
            raise ValidationError({"syslog_host": "Forwarding needs a host."})
        if not 0 < self.syslog_port < 65536:
            raise ValidationError({"syslog_port": "A port is 1 to 65535."})
        if self.syslog_ca_file and self.syslog_transport == SyslogTransport.TLS:
            from pathlib import Path

            if not Path(self.syslog_ca_file).is_file():
                raise ValidationError({"syslog_ca_file": "No such file."})


class AuditMark(models.Model):
    """Work already audited, for events that a sweep finds rather than a
    signal delivers (transfer jobs): the unique key is the claim that keeps
    two worker processes from recording one job twice."""

    key = models.CharField(max_length=64, unique=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self):
        return self.key
