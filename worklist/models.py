"""Worklist: HL7 listener settings, worklist items from orders, the HL7 log."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from dicomnodes.validators import validate_ae_title
from pacs_site.singleton import SingletonModel
from worklist.senders import SenderRules

# HL7 table 0211 (MSH-18) names and the common Windows code pages -> Python codec.
HL7_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "iso8859_1",
    "8859/2": "iso8859_2",
    "8859/3": "iso8859_3",
    "8859/4": "iso8859_4",
    "8859/5": "iso8859_5",
    "8859/6": "iso8859_6",
    "8859/7": "iso8859_7",
    "8859/8": "iso8859_8",
    "8859/9": "iso8859_9",
    "8859/15": "iso8859_15",
    "UNICODE UTF-8": "utf_8",
    "CP1250": "cp1250",
    "CP1251": "cp1251",
    "CP1252": "cp1252",
    "CP1253": "cp1253",
    "CP1254": "cp1254",
    "CP1255": "cp1255",
    "CP1256": "cp1256",
    "CP1257": "cp1257",
    "CP1258": "cp1258",
}
# The DICOM Specific Character Set term for the same repertoire (answers to C-FIND).
DICOM_CHARSETS = {
    "ASCII": "",
    "8859/1": "ISO_IR 100",
    "8859/2": "ISO_IR 101",
    "8859/3": "ISO_IR 109",
    "8859/4": "ISO_IR 110",
    "8859/5": "ISO_IR 144",
    "8859/6": "ISO_IR 127",
    "8859/7": "ISO_IR 126",
    "8859/8": "ISO_IR 138",
    "8859/9": "ISO_IR 148",
    "8859/15": "ISO_IR 203",
    "UNICODE UTF-8": "ISO_IR 192",
}


class WorklistSettings(SingletonModel):
    hl7_port = models.PositiveIntegerField(
        "HL7 port",
        default=2575,
        validators=[MaxValueValidator(65535)],
        help_text="TCP port of the HL7 (MLLP) listener; 0 switches the worklist server off.",
    )
    sending_application = models.CharField(
        max_length=180, default="PACS", help_text="MSH-3 of the messages we send (ACKs, status updates)."
    )
    sending_facility = models.CharField(
        max_length=180, blank=True, default="", help_text="MSH-4 of the messages we send."
    )
    send_acknowledgement = models.BooleanField(default=True, help_text="Answer every HL7 message with an ACK.")
    message_logging = models.BooleanField(
        "log worklist queries",
        default=False,
        help_text="Also log Modality Worklist C-FINDs (many scanners poll every 15 s, so this is off by default). "
        "HL7 messages are always logged.",
    )
    default_charset = models.CharField(
        max_length=16,
        choices=[(name, name) for name in HL7_CHARSETS],
        default="8859/1",
        help_text="Character set of HL7 messages whose MSH-18 is empty.",
    )
    max_message_size = models.PositiveIntegerField(
        "maximum message size (bytes)", default=1024 * 1024, validators=[MinValueValidator(1024)]
    )
    idle_timeout = models.PositiveIntegerField(
        "idle time-out (s)",
        default=300,
        validators=[MinValueValidator(1), MaxValueValidator(86400)],
        help_text="Close an HL7 connection that has sent nothing for this long.",
    )
    frame_timeout = models.PositiveIntegerField(
        "message time-out (s)",
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(3600)],
        help_text="A message must arrive whole within this long of its first byte (bytes outside "
        "a message count too); otherwise the connection is closed. Stops a sender that "
        "trickles bytes to keep a connection open.",
    )
    max_connections = models.PositiveIntegerField(
        "maximum connections",
        default=32,
        validators=[MinValueValidator(1), MaxValueValidator(10000)],
        help_text="HL7 connections open at once; a connection beyond it is closed at once and logged.",
    )
    allowed_senders = models.TextField(
        blank=True,
        help_text="Who may send HL7 messages, one entry per line: an IP address or network "
        "(10.1.2.3, 10.1.0.0/16) or a sending application^facility pair as in MSH-3^MSH-4 "
        "(RIS^HOSPITAL; * matches anything). When both kinds are listed a message must match "
        "both. Anything else is answered AR and not applied. Empty: anyone who can reach the port.",
    )

    class Meta:
        verbose_name = "worklist server settings"
        verbose_name_plural = "worklist server settings"

    def __str__(self):
        return f"HL7 on port {self.hl7_port or 'off'}"

    def clean(self):
        super().clean()
        try:
            SenderRules.parse(self.allowed_senders)
        except ValueError as exc:
            raise ValidationError({"allowed_senders": str(exc)}) from None

    def sender_rules(self) -> SenderRules:
        """The allowed senders; a stored value that no longer parses (edited
        outside the admin) allows nobody rather than anybody."""
        try:
            return SenderRules.parse(self.allowed_senders)
        except ValueError:
            return SenderRules(nobody=True)


class ItemStatus(models.TextChoices):
    SCHEDULED = "SCHEDULED", "scheduled"
    IN_PROGRESS = "IN PROGRESS", "in progress"
    COMPLETED = "COMPLETED", "completed"
    CANCELLED = "CANCELLED", "cancelled"
    DISCONTINUED = "DISCONTINUED", "discontinued"


# Items in these states are not offered to modalities.
HIDDEN_STATUSES = (ItemStatus.CANCELLED, ItemStatus.DISCONTINUED, ItemStatus.COMPLETED)


class WorklistItem(models.Model):
    """One Scheduled Procedure Step of a requested procedure (IHE RAD-4 orders)."""

    status = models.CharField(max_length=16, choices=ItemStatus.choices, default=ItemStatus.SCHEDULED, db_index=True)
    # Order identity, for updates and cancels.
    placer_order_number = models.CharField(max_length=64, blank=True, db_index=True)  # ORC-2
    filler_order_number = models.CharField(max_length=64, blank=True, db_index=True)  # ORC-3
    sending_application = models.CharField(max_length=180, blank=True)  # MSH-3 of the order
    sending_facility = models.CharField(max_length=180, blank=True)  # MSH-4 of the order
    # Patient (PID).
    patient_id = models.CharField(max_length=64, db_index=True)  # (0010,0020) <- PID-3.1
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)  # (0010,0021) <- PID-3.4
    patient_name = models.CharField(max_length=324, blank=True)  # (0010,0010) <- PID-5
    patient_name_upper = models.CharField(max_length=324, blank=True, db_index=True)
    patient_birth_date = models.CharField(max_length=8, blank=True)  # (0010,0030) <- PID-7
    patient_sex = models.CharField(max_length=16, blank=True)  # (0010,0040) <- PID-8
    # Requested procedure / imaging service request.
    accession_number = models.CharField(max_length=16, blank=True, db_index=True)  # (0008,0050)
    requested_procedure_id = models.CharField(max_length=16, blank=True)  # (0040,1001)
    requested_procedure_description = models.CharField(max_length=64, blank=True)  # (0032,1060)
    requested_procedure_code_value = models.CharField(max_length=64, blank=True)  # (0032,1064) item
    requested_procedure_code_scheme = models.CharField(max_length=64, blank=True)
    requested_procedure_code_meaning = models.CharField(max_length=64, blank=True)
    requested_procedure_priority = models.CharField(max_length=16, blank=True)  # (0040,1003)
    requesting_physician = models.CharField(max_length=324, blank=True)  # (0032,1032)
    referring_physician_name = models.CharField(max_length=324, blank=True)  # (0008,0090)
    study_instance_uid = models.CharField(max_length=64, blank=True, db_index=True)  # (0020,000D)
    # Scheduled procedure step.
    scheduled_procedure_step_id = models.CharField(max_length=16, blank=True)  # (0040,0009)
    scheduled_procedure_step_description = models.CharField(max_length=64, blank=True)  # (0040,0007)
    scheduled_protocol_code_value = models.CharField(max_length=64, blank=True)  # (0040,0008) item
    scheduled_protocol_code_scheme = models.CharField(max_length=64, blank=True)
    scheduled_protocol_code_meaning = models.CharField(max_length=64, blank=True)
    modality = models.CharField(max_length=16, blank=True, db_index=True)  # (0008,0060)
    scheduled_station_ae_title = models.CharField(
        max_length=16, blank=True, db_index=True, validators=[validate_ae_title]
    )  # (0040,0001)
    scheduled_start_date = models.CharField(max_length=8, blank=True, db_index=True)  # (0040,0002) DA
    scheduled_start_time = models.CharField(max_length=16, blank=True)  # (0040,0003) TM, padded
    scheduled_performing_physician_name = models.CharField(max_length=324, blank=True)  # (0040,0006)
    # DICOM term of the character set the order came in (answers use it; ISO_IR 192 when mixed).
    specific_character_set = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scheduled_start_date", "scheduled_start_time", "pk"]
        indexes = [models.Index(fields=["status", "scheduled_start_date"])]

    def __str__(self):
        return f"{self.accession_number or self.placer_order_number} {self.patient_name} {self.modality}"

    def save(self, *args, **kwargs):
        self.patient_name_upper = self.patient_name.upper()
        super().save(*args, **kwargs)


class MessageOutcome(models.TextChoices):
    APPLIED = "applied", "applied"
    DUPLICATE = "duplicate", "duplicate (acknowledged, not applied again)"
    ERROR = "error", "error (AE)"
    REJECTED = "rejected", "rejected (AR)"


class HL7Message(models.Model):
    """Every HL7 message received, with what became of it."""

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    peer = models.CharField(max_length=64, blank=True)
    # The sending host (no port): duplicates are recognised per address,
    # since MSH-3/MSH-4 are whatever the sender writes.
    sender_address = models.CharField(max_length=64, blank=True)
    sending_application = models.CharField(max_length=180, blank=True)  # MSH-3
    sending_facility = models.CharField(max_length=180, blank=True)  # MSH-4
    control_id = models.CharField(max_length=199, blank=True, db_index=True)  # MSH-10
    message_type = models.CharField(max_length=32, blank=True)  # MSH-9, e.g. ORM^O01
    version = models.CharField(max_length=16, blank=True)  # MSH-12
    charset = models.CharField(max_length=32, blank=True)  # MSH-18 or the default used
    raw = models.TextField(blank=True)  # decoded text, segments separated by \r
    summary = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=16, choices=MessageOutcome.choices)
    ack_code = models.CharField(max_length=2, blank=True)  # AA / AE / AR
    ack = models.TextField(blank=True)
    error = models.TextField(blank=True)
    item = models.ForeignKey(WorklistItem, null=True, blank=True, on_delete=models.SET_NULL, related_name="messages")

    class Meta:
        ordering = ["-received_at"]
        verbose_name = "HL7 message"

    def __str__(self):
        return f"{self.message_type} {self.control_id} ({self.outcome})"


class WorklistQuery(models.Model):
    """A Modality Worklist C-FIND, logged only when "log worklist queries" is on."""

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    calling_ae = models.CharField(max_length=16, blank=True)
    peer_address = models.CharField(max_length=64, blank=True)
    keys = models.TextField(blank=True)  # the matching keys with values
    matches = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=8, blank=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name_plural = "worklist queries"


class HL7Destination(models.Model):
    """Where order status updates are sent (ORM^O01, ORC-1 SC / ORC-5 CM)."""

    name = models.CharField(max_length=64)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65535)])
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "HL7 destination"

    def __str__(self):
        return f"{self.name} ({self.host}:{self.port})"


class DeliveryState(models.TextChoices):
    PENDING = "pending", "pending"
    SENT = "sent", "sent (ACK recorded)"
    FAILED = "failed", "failed (gave up)"


class OutgoingHL7Message(models.Model):
    """An order status update for one destination, delivered by the worker
    (worklist.outgoing.deliver) with retries."""

    item = models.ForeignKey(WorklistItem, on_delete=models.CASCADE, related_name="status_updates")
    destination = models.ForeignKey(HL7Destination, on_delete=models.CASCADE, related_name="messages")
    message = models.TextField()  # ER7, segments separated by \r; MSH-18 names the charset it is sent in
    state = models.CharField(max_length=16, choices=DeliveryState.choices, default=DeliveryState.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)  # failed attempts so far
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    ack_code = models.CharField(max_length=2, blank=True)  # MSA-1: AA / AE / AR (CA / CE / CR)
    ack = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "outgoing HL7 message"

    def __str__(self):
        return f"status update of {self.item_id} to {self.destination_id} ({self.state})"
