"""DICOM node: server settings, known peers, the archive index, association log.

The files under PACS_DATA_DIR/storage are the truth; these tables are an index
over them that `manage.py reindex` can rebuild.
"""

import uuid

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from dicomnodes import aetitle
from dicomnodes.archive.storage import instance_path
from dicomnodes.validators import validate_ae_title, validate_retry_delays
from pacs_site.singleton import SingletonModel
from pacs_site.tls import CertificateProblem, check_certificate_pair, load_certificate

# Called AE suffixes that also reach us: publishing (EPSON/PRIMERA, immediate
# or delayed) decides what to do from the one an instance arrived on.
PUBLISHING_SUFFIXES = ("_E", "_P", "_TE", "_TP")


class DuplicatePolicy(models.TextChoices):
    KEEP_FIRST = "keep", "Keep the first copy"
    OVERWRITE = "overwrite", "Overwrite with the new copy"


class DicomServerSettings(SingletonModel):
    ae_title = models.CharField(
        "AE title",
        max_length=16,
        default="PACS",
        validators=[validate_ae_title],
        help_text="Our Application Entity title (case-sensitive). We also answer to it "
        "with the suffixes _E, _P, _TE and _TP (disc publishing), so keep it at "
        "13 characters or fewer if modalities are to use those.",
    )
    port = models.PositiveIntegerField(
        default=11112,
        validators=[MaxValueValidator(65535)],
        help_text="TCP port of the DICOM server; 0 switches the DICOM server off.",
    )
    debug = models.BooleanField(
        "debug mode",
        default=False,
        help_text="Write a verbose protocol log (every PDU and DIMSE message) to "
        "logs/dicom-debug.log in the data folder.",
    )
    service_timeout = models.PositiveIntegerField(
        "service time-out (s)",
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(3600)],
        help_text="How long to wait for a peer (association negotiation, DIMSE "
        "messages, network silence) before the association is aborted.",
    )
    duplicate_policy = models.CharField(
        max_length=16,
        choices=DuplicatePolicy.choices,
        default=DuplicatePolicy.KEEP_FIRST,
        help_text="What to do when an instance arrives whose SOP Instance UID is "
        "already stored. Either way the sender gets success.",
    )
    unknown_ae_may_echo_and_store = models.BooleanField(
        "unknown AEs may echo and store",
        default=True,
        help_text="Accept C-ECHO and C-STORE from calling AE titles that are not "
        "in the peer list. Query and retrieve always need a known peer.",
    )
    trust_any_sender = models.BooleanField(
        "any sender completes orders and joins patient links",
        default=False,
        help_text="Off: a study first stored by a caller that is not a known peer (its AE title, "
        'from its host when "check host" is on) is archived and can be found, but completes no '
        "worklist item, sends no HL7 to the RIS and joins no all-studies patient link. "
        "Replacing a stored instance (overwrite policy) needs a known peer either way.",
    )
    case_insensitive_names = models.BooleanField(
        "person names match case-insensitively",
        default=True,
        help_text="C-FIND: match patient and physician names without regard to case.",
    )
    find_result_limit = models.PositiveIntegerField(
        "C-FIND result limit",
        default=0,
        help_text="Stop a C-FIND after this many matches (0 = unlimited).",
    )
    max_outgoing_connections = models.PositiveIntegerField(
        "maximum outgoing connections",
        default=4,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="How many transfer jobs (send, retrieve) may hold an association with a "
        "peer at once; the others wait in the queue, first come first served. Incoming "
        "associations are not limited.",
    )
    retry_delays = models.CharField(
        "retry delays",
        max_length=200,
        default="1m 5m 15m 1h",
        validators=[validate_retry_delays],
        help_text="After a network failure a transfer job is tried again after each of "
        'these delays in turn (s, m, h, e.g. "30s 5m 1h"), then fails for good. '
        "Empty: no retries.",
    )
    open_transferred_studies = models.BooleanField(
        "open transferred studies when received",
        default=False,
        help_text="When a study has been received or retrieved, the dashboard opens it by itself.",
    )
    fsync_on_store = models.BooleanField(
        "fsync on store",
        default=True,
        help_text="Flush every received file to the disk before answering the "
        "sender. Off is faster but a power cut may lose acknowledged images.",
    )
    max_associations = models.PositiveIntegerField(
        "maximum incoming associations",
        default=100,
        validators=[MinValueValidator(1), MaxValueValidator(10000)],
        help_text="Associations the DICOM server runs at once, all callers together; a caller "
        "beyond it is rejected as transient (local limit exceeded) and may try again. "
        "Connections that have not yet asked for an association are dropped, oldest "
        "first, to make room.",
    )
    max_associations_per_address = models.PositiveIntegerField(
        "maximum incoming associations per address",
        default=20,
        validators=[MinValueValidator(1), MaxValueValidator(10000)],
        help_text="Associations one network address may hold at once (IPv6: per /64).",
    )
    max_inflated_mb = models.PositiveIntegerField(
        "largest inflated dataset (MB)",
        default=1024,
        validators=[MinValueValidator(1), MaxValueValidator(1 << 20)],
        help_text="A dataset in Deflated Explicit VR Little Endian that inflates beyond this "
        "is refused (C-STORE status C000) and its bytes kept in the quarantine folder.",
    )
    max_decoded_mb = models.PositiveIntegerField(
        "largest decoded pixel data (MB)",
        default=1024,
        validators=[MinValueValidator(1), MaxValueValidator(1 << 20)],
        help_text="Sending a compressed image to a peer that cannot take its transfer syntax "
        "decodes its pixel data; an image that decodes beyond this is not converted and "
        "its sub-operation fails.",
    )
    tls_port = models.PositiveIntegerField(
        "TLS port",
        default=0,
        validators=[MaxValueValidator(65535)],
        help_text="A second port for DICOM over TLS (PS3.15 B.1, e.g. 2762); 0: none. "
        "The same services and rules as on the plain port.",
    )
    tls_certificate_file = models.CharField(
        "TLS certificate file (.crt)", max_length=1024, blank=True, help_text="Absolute path of a PEM certificate."
    )
    tls_key_file = models.CharField(
        "TLS key file (.key)", max_length=1024, blank=True, help_text="Absolute path of its PEM private key."
    )
    tls_client_ca_file = models.CharField(
        "client CA certificates",
        max_length=1024,
        blank=True,
        help_text="Absolute path of PEM CA certificates: when given, peers must present a certificate "
        "they signed (mutual authentication); when empty, any peer may connect over TLS.",
    )

    class Meta:
        verbose_name = "DICOM server settings"
        verbose_name_plural = "DICOM server settings"

    def clean(self):
        super().clean()
        if not self.tls_port:
            return
        if self.tls_port == self.port:
            raise ValidationError({"tls_port": "The TLS port must differ from the DICOM port."})
        field = {"certificate": "tls_certificate_file", "key": "tls_key_file"}
        errors = {}
        for problem in check_certificate_pair(self.tls_certificate_file, self.tls_key_file):
            errors.setdefault(field[problem.field], []).append(str(problem))
        if self.tls_client_ca_file:
            try:
                load_certificate(self.tls_client_ca_file)
            except CertificateProblem as exc:
                errors.setdefault("tls_client_ca_file", []).append(str(exc))
        if errors:
            raise ValidationError(errors)

    def __str__(self):
        return f"{self.ae_title} on port {self.port or 'off'}"

    def our_ae_title(self):
        """The AE title of this run: the stored one unless PACS_AE_TITLE
        (`runpacs`/`runscp --ae-title`) overrides it (`dicomnodes.aetitle`).
        Every process asks this, never `ae_title`."""
        return aetitle.override() or self.ae_title

    def called_ae_titles(self):
        """Every called AE title we accept: ours and its publishing variants."""
        ours = self.our_ae_title()
        return {ours} | {ours + s for s in PUBLISHING_SUFFIXES}


class ArchiveSettings(SingletonModel):
    """The archive's life cycle: the disk guard and recycling
    (dicomnodes/lifecycle/).  0 means no limit of that kind."""

    min_free_mb = models.PositiveIntegerField(
        "minimum free space (MB)",
        default=2048,
        help_text="Refuse C-STORE and STOW-RS (status A700, saying why) when the storage volume has less "
        "free space than this or than the percentage below, whichever is larger, so the database "
        "on the same volume keeps room. 0: no minimum in MB.",
    )
    min_free_percent = models.PositiveSmallIntegerField(
        "minimum free space (%)",
        default=5,
        validators=[MaxValueValidator(90)],
        help_text="The same minimum as a percentage of the volume's size. 0: no minimum in percent.",
    )
    max_storage_mb = models.PositiveBigIntegerField(
        "maximum storage size (MB)",
        default=0,
        help_text="Recycling: when the stored instances take more than this, the studies received "
        "longest ago that are not protected are deleted until they fit. 0: no maximum.",
    )
    max_patients = models.PositiveIntegerField(
        "maximum number of patients",
        default=0,
        help_text="Recycling: when more patients than this are stored, the studies received longest "
        "ago that are not protected are deleted until they fit. 0: no maximum.",
    )

    class Meta:
        verbose_name = "archive settings"
        verbose_name_plural = "archive settings"

    def __str__(self):
        return "Archive settings"


class Peer(models.Model):
    """A known DICOM node and what it may do with us."""

    name = models.CharField(max_length=64)
    ae_title = models.CharField("AE title", max_length=16, validators=[validate_ae_title])
    host = models.CharField(max_length=255, help_text="IP address or host name.")
    port = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65535)], default=104)
    may_store = models.BooleanField("may store to us", default=True)
    may_query = models.BooleanField("may query us (C-FIND)", default=False)
    may_retrieve = models.BooleanField("may retrieve with C-GET", default=False)
    is_move_destination = models.BooleanField("is a C-MOVE destination", default=False)
    check_host = models.BooleanField(
        default=True,
        help_text="Accept this AE title only from the address its host resolves to. On by "
        "default: otherwise the calling AE title is the only credential. Turn it off only "
        "for a modality whose address changes.",
    )
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["ae_title", "host", "port"], name="peer_unique_ae_host_port")]

    def __str__(self):
        return f"{self.name} ({self.ae_title}@{self.host}:{self.port})"

    def clean(self):
        super().clean()
        if self.host and any(c.isspace() for c in self.host):
            raise ValidationError({"host": "A host name has no spaces."})


# --- The archive index ---------------------------------------------------------
# Dates are kept as DICOM DA strings (YYYYMMDD) and times as TM strings padded to
# HHMMSS[.ffffff]: both sort and range-compare correctly as text.  Names are
# also stored upper-cased for case-insensitive matching.


class Patient(models.Model):
    patient_id = models.CharField(max_length=64, db_index=True)  # (0010,0020) LO
    issuer_of_patient_id = models.CharField(max_length=64, blank=True)  # (0010,0021) LO
    patient_name = models.CharField(max_length=324, blank=True)  # (0010,0010) PN
    patient_name_upper = models.CharField(max_length=324, blank=True, db_index=True)
    patient_birth_date = models.CharField(max_length=8, blank=True, db_index=True)  # (0010,0030)
    patient_sex = models.CharField(max_length=16, blank=True)  # (0010,0040) CS
    num_studies = models.PositiveIntegerField(default=0)
    protected = models.BooleanField(
        default=False, help_text="Recycling and retention rules never delete this patient's studies."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["patient_name", "patient_id"]
        constraints = [
            models.UniqueConstraint(fields=["patient_id", "issuer_of_patient_id"], name="patient_unique_id_issuer")
        ]

    def __str__(self):
        return f"{self.patient_name or '(no name)'} [{self.patient_id}]"


class Study(models.Model):
    study_instance_uid = models.CharField(max_length=64, unique=True)  # (0020,000D) UI
    # The patient row; `patient_id` below is the DICOM Patient ID (0010,0020).
    patient_record = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="studies")
    # Denormalised from the patient so a study-level C-FIND reads one table.
    patient_id = models.CharField(max_length=64, db_index=True)
    patient_name = models.CharField(max_length=324, blank=True)
    patient_name_upper = models.CharField(max_length=324, blank=True, db_index=True)
    patient_birth_date = models.CharField(max_length=8, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)
    study_date = models.CharField(max_length=8, blank=True, db_index=True)  # (0008,0020) DA
    study_time = models.CharField(max_length=16, blank=True, db_index=True)  # (0008,0030) TM
    accession_number = models.CharField(max_length=16, blank=True, db_index=True)  # (0008,0050)
    study_id = models.CharField("study ID", max_length=16, blank=True, db_index=True)  # (0020,0010)
    study_description = models.CharField(max_length=128, blank=True)  # (0008,1030) LO
    referring_physician_name = models.CharField(max_length=324, blank=True)  # (0008,0090) PN
    referring_physician_name_upper = models.CharField(max_length=324, blank=True, db_index=True)
    specific_character_set = models.CharField(max_length=128, blank=True)  # (0008,0005)
    modalities_in_study = models.CharField(max_length=128, blank=True)  # backslash-joined
    # Whether the instance that created this row came from a known peer: a
    # study from anyone completes no order and joins no all-studies link
    # unless DicomServerSettings.trust_any_sender.
    from_known_peer = models.BooleanField(
        "stored by a known peer",
        default=True,
        help_text="Off: its first instance came from a caller not in the peer list.",
    )
    num_series = models.PositiveIntegerField(default=0)
    num_instances = models.PositiveIntegerField(default=0)
    protected = models.BooleanField(default=False, help_text="Recycling and retention rules never delete this study.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-study_date", "-study_time"]
        verbose_name_plural = "studies"

    def __str__(self):
        return f"{self.study_date or '????????'} {self.study_description or self.study_instance_uid}"


class Series(models.Model):
    series_instance_uid = models.CharField(max_length=64, unique=True)  # (0020,000E) UI
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    modality = models.CharField(max_length=16, blank=True, db_index=True)  # (0008,0060) CS
    series_number = models.IntegerField(null=True, blank=True, db_index=True)  # (0020,0011) IS
    series_description = models.CharField(max_length=128, blank=True)  # (0008,103E) LO
    body_part_examined = models.CharField(max_length=16, blank=True)  # (0018,0015) CS
    series_date = models.CharField(max_length=8, blank=True, db_index=True)  # (0008,0021) DA
    series_time = models.CharField(max_length=16, blank=True)  # (0008,0031) TM
    institution_name = models.CharField(max_length=128, blank=True)  # (0008,0080) LO
    station_name = models.CharField(max_length=16, blank=True)  # (0008,1010) SH
    num_instances = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["series_number", "series_instance_uid"]
        verbose_name_plural = "series"

    def __str__(self):
        return f"{self.modality or '??'} #{self.series_number} {self.series_description}".strip()


class Instance(models.Model):
    # Every index here is written by every commit of the ingest (one B-tree
    # page each in SQLite's WAL): the instance table keeps those its queries
    # use.  (series, instance_number) serves both "the instances of a series"
    # and their order; called_ae is only shown and filtered in the admin.
    # Five indexes instead of seven: a one-instance commit 0.21-0.22 ->
    # 0.18-0.19 ms on ext4 (docs/storage.md, The index).
    sop_instance_uid = models.CharField("SOP Instance UID", max_length=64, unique=True)
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances", db_index=False)
    sop_class_uid = models.CharField("SOP Class UID", max_length=64, db_index=True)
    instance_number = models.IntegerField(null=True, blank=True)  # (0020,0013)
    transfer_syntax_uid = models.CharField(max_length=64)
    file_size = models.BigIntegerField(default=0)
    called_ae = models.CharField("called AE", max_length=16, blank=True)
    calling_ae = models.CharField("calling AE", max_length=16, blank=True)
    association = models.ForeignKey(
        "AssociationLog", null=True, blank=True, on_delete=models.SET_NULL, related_name="instances"
    )
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["instance_number", "sop_instance_uid"]
        indexes = [models.Index(fields=["series", "instance_number"], name="instance_series_number")]

    def __str__(self):
        return self.sop_instance_uid

    @property
    def path(self):
        return instance_path(self.sop_instance_uid)


class RetentionRule(models.Model):
    """Delete studies older than N days, optionally only of one modality or
    from one calling AE (dicomnodes/lifecycle/ runs the rules daily)."""

    name = models.CharField(max_length=64, unique=True)
    enabled = models.BooleanField(default=True)
    older_than_days = models.PositiveIntegerField(
        "older than (days)",
        validators=[MinValueValidator(1)],
        help_text="Delete a study when its last instance was received longer ago than this.",
    )
    modality = models.CharField(
        max_length=16, blank=True, help_text="Only studies with this modality (e.g. CR); empty: any."
    )
    calling_ae = models.CharField(
        "calling AE", max_length=16, blank=True, help_text="Only studies sent by this AE title; empty: any."
    )
    notes = models.TextField(blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_deleted = models.PositiveIntegerField("studies deleted at the last run", default=0, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class AssociationResult(models.TextChoices):
    OPEN = "open", "in progress"
    RELEASED = "released", "released"
    ABORTED = "aborted", "aborted"
    REJECTED = "rejected", "rejected"


class AssociationLog(models.Model):
    """One row per incoming association, written by `runscp`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    started_at = models.DateTimeField(db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    calling_ae = models.CharField("calling AE", max_length=16, blank=True, db_index=True)
    called_ae = models.CharField("called AE", max_length=16, blank=True)
    peer_address = models.CharField(max_length=64, blank=True)
    peer_port = models.PositiveIntegerField(null=True, blank=True)
    instances_received = models.PositiveIntegerField(default=0)
    instances_failed = models.PositiveIntegerField(default=0)
    bytes_received = models.BigIntegerField(default=0)
    duration = models.FloatField("duration (s)", null=True, blank=True)
    result = models.CharField(max_length=16, choices=AssociationResult.choices, default=AssociationResult.OPEN)
    reason = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-started_at"]
        verbose_name = "association"

    def __str__(self):
        return f"{self.calling_ae} → {self.called_ae} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class Tombstone(models.Model):
    """The file of a deleted instance, until it is unlinked (dicomnodes/
    archive/tombstones.py).  Written in the transaction that deletes the
    rows, so that a crash before the unlink leaves a file that the start-up
    reconciliation removes instead of indexing it again; kept a day after
    the unlink, so that an index write racing the deletion can tell that the
    file it was about to index is gone."""

    sop_instance_uid = models.CharField("SOP Instance UID", max_length=64, unique=True)
    deleted_at = models.DateTimeField(db_index=True)
    unlinked_at = models.DateTimeField(null=True, blank=True, db_index=True)

    def __str__(self):
        return self.sop_instance_uid


from dicomnodes.transfers.models import (  # noqa: E402,F401  (models of this app)
    FINISHED_STATES,
    TransferJob,
    TransferKind,
    TransferLevel,
    TransferState,
)
