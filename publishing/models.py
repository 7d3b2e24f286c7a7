"""Disc publishing: settings, the disc robots (publishers) and burn jobs.

A burn job collects instances (from an association to `<AE>_E`/`_P`, a group
of associations to `<AE>_TE`/`_TP`, or the admin's "Burn to CD/DVD…"), is
staged as one or more DICOM File-sets and handed to a robot as job files;
each disc of the job is a `Disc` row with the robot's view of it.
"""

import codecs
import datetime
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from pacs_site.singleton import SingletonModel

# Disc capacities (bytes).  "700 MB" CD-R: 700 MiB, a little under the
# 737,280,000 data bytes of an 80-minute disc; "4.7 GB" DVD±R: 4.7e9, a
# little under its 4,707,319,808 bytes.  The rest is left to the file system;
# each file is also counted in whole 2 KiB sectors (see discs.py).
CD_CAPACITY = 700 * 1024 * 1024
DVD_CAPACITY = 4_700_000_000

# Label merge fields, in the default order (PTBurn matches them by position).
MERGE_FIELDS = {
    "patient_name": "Patient name",
    "patient_id": "Patient ID",
    "birth_date": "Birth date",
    "study_date": "Study date",
    "study_description": "Study description",
    "modality": "Modality",
    "institution": "Institution",
    "disc": "Disc N of M",
}
DEFAULT_MERGE_FIELDS = " ".join(MERGE_FIELDS)


def validate_merge_fields(value):
    unknown = [name for name in value.split() if name not in MERGE_FIELDS]
    if unknown:
        raise ValidationError(f"Unknown merge fields: {', '.join(unknown)}. Known: {', '.join(MERGE_FIELDS)}.")


def validate_encoding(value):
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValidationError(f"{value!r} is not a character encoding Python knows (e.g. cp1252).") from None


class Grouping(models.TextChoices):
    PATIENT_ID = "patient", "Same Patient ID"
    STUDY_UID = "study", "Same Study Instance UID"


class PublishingSettings(SingletonModel):
    delay_seconds = models.PositiveIntegerField(
        "delay (s)",
        default=120,
        validators=[MinValueValidator(1), MaxValueValidator(86400)],
        help_text="_TE/_TP: a group is burned when no series arrived for this long.",
    )
    grouping = models.CharField(
        max_length=16,
        choices=Grouping.choices,
        default=Grouping.PATIENT_ID,
        help_text="_TE/_TP: which series go on one disc.",
    )
    staging_folder = models.CharField(
        max_length=500,
        blank=True,
        help_text="Where disc images are prepared. Blank: the folder 'publishing' in the data folder.",
    )
    viewer_folder = models.CharField(
        max_length=500,
        blank=True,
        help_text="Optional: a folder (e.g. a DICOM viewer) whose contents are copied onto every disc.",
    )
    keep_staging = models.BooleanField(
        "keep staging after success",
        default=False,
        help_text="Keep a disc's prepared folder once the robot reports it done.",
    )

    class Meta:
        verbose_name = "publishing settings"
        verbose_name_plural = "publishing settings"

    def __str__(self):
        return "Publishing settings"

    def staging_path(self) -> Path:
        return Path(self.staging_folder) if self.staging_folder else Path(settings.PACS_DATA_DIR) / "publishing"

    def clean(self):
        super().clean()
        for name in ("staging_folder", "viewer_folder"):
            value = getattr(self, name)
            if value and not Path(value).is_absolute():
                raise ValidationError({name: "Give an absolute path."})
        if self.viewer_folder and not Path(self.viewer_folder).is_dir():
            raise ValidationError({"viewer_folder": "This folder does not exist."})


class PublisherKind(models.TextChoices):
    EPSON = "epson", "EPSON TD Bridge"
    PRIMERA = "primera", "PRIMERA PTBurn"


class DiscType(models.TextChoices):
    AUTO = "auto", "Automatic (by size)"
    CD = "cd", "CD"
    DVD = "dvd", "DVD"


class Publisher(models.Model):
    """A disc robot reached through its hot folder."""

    name = models.CharField(max_length=64)
    kind = models.CharField(max_length=16, choices=PublisherKind.choices)
    is_default = models.BooleanField(
        "default for its kind",
        default=False,
        help_text="_E sends to the default EPSON publisher, _P to the default PRIMERA one.",
    )
    enabled = models.BooleanField(default=True)
    job_folder = models.CharField(
        "job request folder",
        max_length=500,
        help_text="The robot's hot folder as this server sees it (a mounted share): "
        "TD Bridge's monitoring folder or PTBurn's job request folder.",
    )
    status_location = models.CharField(
        max_length=500,
        blank=True,
        help_text="The robot's status file (TD Bridge: TDBStatus.txt; PTBurn: Status\\PTStatus.txt or "
        "Status\\<robot>.txt), or the folder holding it. Blank: the vendor's default in the job folder.",
    )
    robot_staging_folder = models.CharField(
        "staging folder seen by the robot",
        max_length=500,
        blank=True,
        help_text="The staging folder as the robot's PC sees it (e.g. \\\\PACS\\publishing), written "
        "into the job files. Blank: the same path as here.",
    )
    robot_name = models.CharField(
        max_length=64,
        blank=True,
        help_text="EPSON: the PUBLISHER name registered in Total Disc Setup. PRIMERA: RobotName (optional).",
    )
    disc_type = models.CharField(max_length=8, choices=DiscType.choices, default=DiscType.AUTO)
    copies = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(1000)])
    label_template = models.CharField(
        "label template file",
        max_length=500,
        blank=True,
        help_text="Path on the robot's PC: EPSON a .tdd label, PRIMERA a SureThing .std. Blank: no printing.",
    )
    merge_fields = models.CharField(
        max_length=300,
        default=DEFAULT_MERGE_FIELDS,
        blank=True,
        validators=[validate_merge_fields],
        help_text="Label merge fields, in order, separated by spaces: " + ", ".join(MERGE_FIELDS) + ".",
    )
    encoding = models.CharField(
        "job file encoding",
        max_length=32,
        default="cp1252",
        validators=[validate_encoding],
        help_text="The robot PC's ANSI code page (cp1252 Western, cp1253 Greek, …).",
    )
    cd_capacity = models.PositiveBigIntegerField("CD capacity (bytes)", default=CD_CAPACITY)
    dvd_capacity = models.PositiveBigIntegerField("DVD capacity (bytes)", default=DVD_CAPACITY)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind"], condition=Q(is_default=True), name="publisher_one_default_per_kind"
            )
        ]

    def __str__(self):
        return f"{self.name} ({self.get_kind_display()})"

    def clean(self):
        super().clean()
        if self.job_folder and not Path(self.job_folder).is_dir():
            raise ValidationError({"job_folder": "This folder does not exist here (is the robot's share mounted?)."})
        if self.cd_capacity and self.dvd_capacity and self.cd_capacity > self.dvd_capacity:
            raise ValidationError({"cd_capacity": "A CD holds less than a DVD."})

    @classmethod
    def default_for(cls, kind):
        return cls.objects.filter(kind=kind, is_default=True, enabled=True).first()


class Trigger(models.TextChoices):
    IMMEDIATE = "immediate", "immediate (_E/_P)"
    DELAYED = "delayed", "delayed (_TE/_TP)"
    MANUAL = "manual", "manual (admin)"


class JobState(models.TextChoices):
    COLLECTING = "collecting", "collecting"
    DUE = "due", "due"
    NO_PUBLISHER = "no_publisher", "no publisher"
    STAGING = "staging", "staging"
    SUBMITTED = "submitted", "submitted"
    BURNING = "burning", "burning"
    DONE = "done", "done"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


ACTIVE_STATES = (JobState.SUBMITTED, JobState.BURNING)
FINAL_STATES = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class BurnJob(models.Model):
    kind = models.CharField(max_length=16, choices=PublisherKind.choices)
    publisher = models.ForeignKey(Publisher, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    group_key = models.CharField(max_length=80, blank=True, db_index=True)
    studies = models.ManyToManyField("dicomnodes.Study", blank=True, related_name="burn_jobs")
    series = models.ManyToManyField("dicomnodes.Series", blank=True, related_name="burn_jobs")
    instances = models.ManyToManyField("dicomnodes.Instance", blank=True, related_name="burn_jobs")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.DUE, db_index=True)
    due_at = models.DateTimeField("due", null=True, blank=True, db_index=True)
    robot_job_id = models.CharField("robot job ID", max_length=40, blank=True)
    files_written = models.JSONField(default=list, blank=True)
    robot_status = models.TextField("robot status", blank=True)
    good_discs = models.PositiveIntegerField(default=0)
    bad_discs = models.PositiveIntegerField(default=0)
    message = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One collecting job per group: two runscp processes that receive
            # series of one patient at the same time must not open two.
            models.UniqueConstraint(
                fields=["kind", "group_key"],
                condition=Q(state="collecting"),
                name="burnjob_one_collecting_per_group",
            )
        ]

    def __str__(self):
        return f"burn job {self.pk} ({self.get_state_display()})"

    def seconds_to_due(self):
        if self.due_at is None:
            return None
        return (self.due_at - timezone.now()) / datetime.timedelta(seconds=1)


class Disc(models.Model):
    """One disc image of a job: its staging folder and its robot job."""

    job = models.ForeignKey(BurnJob, on_delete=models.CASCADE, related_name="discs")
    number = models.PositiveIntegerField()
    count = models.PositiveIntegerField()
    media = models.CharField(max_length=8)  # cd / dvd
    robot_job_id = models.CharField("robot job ID", max_length=40, unique=True)
    folder = models.CharField(max_length=500)
    job_file = models.CharField(max_length=500, blank=True)
    size = models.BigIntegerField(default=0)
    instance_count = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.STAGING)
    robot_status = models.CharField(max_length=500, blank=True)
    good_discs = models.PositiveIntegerField(default=0)
    bad_discs = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["job", "number"]

    def __str__(self):
        return f"disc {self.number} of {self.count} ({self.robot_job_id})"
