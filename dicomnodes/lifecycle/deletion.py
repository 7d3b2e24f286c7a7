"""Delete patients, studies, series and instances with their files.

`summary(...)` says what a deletion would take (counts, bytes, open patient
links, pending burn jobs, queued or running transfers); `delete(...)` (and
`delete_studies`, `delete_series`, `delete_instances`, `delete_patients`)
does it:

1. one transaction: a tombstone per instance (archive/tombstones.py), the
   instance rows, then the counters of what is left (`hierarchy.recount`:
   a series, study or patient left empty goes too, ModalitiesInStudy is
   recomputed), patient links and burn-job memberships by cascade, and one
   audit event;
2. after the commit: the files are unlinked.  A crash in between leaves
   tombstoned files, which runscp's start (`reconcile.index_orphans`) and
   `manage.py archive verify` unlink instead of indexing them.

runscp's index writer may hold a deleted study in its `HierarchyCache`: its
next insert into it fails on the foreign key and the writer retries with a
clear cache, which creates the study afresh.

Other apps say what a deletion touches of theirs (patient links, burn jobs)
through `register_impact`, in a module named `deletion_hooks` (found as the
admin finds `admin` modules), so that dicomnodes imports none of them.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

from django.db import DatabaseError, transaction
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules

from dicomnodes.archive import tombstones
from dicomnodes.archive.hierarchy import recount
from dicomnodes.models import (
    AssociationResult,
    Instance,
    Patient,
    Series,
    Study,
    TransferJob,
    TransferKind,
    TransferLevel,
    TransferState,
)
from pacs_site.audit import Action, record

logger = logging.getLogger(__name__)

# A study counts as still being received while one of its instances arrived
# this recently, or while an association that stored into it is open (for at
# most OPEN_ASSOCIATION_LIMIT after its last instance: an association row a
# crash left open does not protect a study for ever).
RECEIVING_QUIET = timedelta(minutes=2)
OPEN_ASSOCIATION_LIMIT = timedelta(hours=1)
# How many study UIDs an audit event lists.
AUDIT_UIDS = 100


# --- What other apps lose with a deletion ----------------------------------------------------

_IMPACTS = {}  # name -> (label, counter)
_discovered = []


def register_impact(name, label, counter):
    """`counter(scope) -> int`: how many of an app's things a deletion of
    `scope` (a `Scope`) touches, shown as `label` ("open patient links")."""
    _IMPACTS[name] = (label, counter)


def _impacts():
    if not _discovered:
        autodiscover_modules("deletion_hooks")
        _discovered.append(True)
    return dict(_IMPACTS)


@dataclass
class Scope:
    """Querysets of what goes: `instances` every instance, `series` the
    series that go whole, `studies` the studies that go whole, `touched_studies`
    every study that loses something."""

    instances: object
    series: object
    studies: object
    touched_studies: object


@dataclass
class Deleted:
    """What a deletion took (and the counts a Summary shares)."""

    patients: int = 0
    studies: int = 0
    series: int = 0
    instances: int = 0
    bytes: int = 0
    study_uids: list = field(default_factory=list)  # of the studies touched

    def describe(self):
        return (
            f"{self.patients} patients, {self.studies} studies, {self.series} series, "
            f"{self.instances} instances ({self.bytes / 2**20:.1f} MB)"
        )


@dataclass
class Summary(Deleted):
    """What a deletion would take, and what holds on to it."""

    partial_studies: int = 0  # studies that lose some of their series or instances
    open_links: int = 0
    pending_burns: int = 0
    active_transfers: int = 0
    # (label, count) of every registered impact, transfers included
    impacts: list = field(default_factory=list)

    def is_empty(self):
        return self.instances == 0 and self.studies == 0 and self.patients == 0

    def describe(self):
        text = super().describe()
        if self.partial_studies:
            text += f"; {self.partial_studies} studies lose part of their images"
        return text


@dataclass
class Selection:
    """Primary keys chosen: whole patients, whole studies, whole series, instances."""

    patients: list = field(default_factory=list)
    studies: list = field(default_factory=list)
    series: list = field(default_factory=list)
    instances: list = field(default_factory=list)

    def whole_studies(self):
        return Study.objects.filter(Q(pk__in=self.studies) | Q(patient_record_id__in=self.patients))

    def instance_rows(self):
        return Instance.objects.filter(
            Q(series__study__in=self.whole_studies().values("pk"))
            | Q(series_id__in=self.series)
            | Q(pk__in=self.instances)
        )


def selection(*, patients=(), studies=(), series=(), instances=()) -> Selection:
    return Selection(list(patients), list(studies), list(series), list(instances))


def scope_of(sel: Selection) -> Scope:
    rows = sel.instance_rows()
    per_series = rows.order_by().values("series_id").annotate(n=Count("pk"))
    touched_series = Series.objects.filter(pk__in=rows.values("series_id"))
    counts = {r["series_id"]: r["n"] for r in per_series}
    totals = dict(touched_series.values_list("pk", "num_instances"))
    whole_series = [pk for pk, n in counts.items() if n >= totals.get(pk, 0)]
    whole_series_qs = Series.objects.filter(Q(pk__in=whole_series) | Q(pk__in=sel.series))
    touched_studies = Study.objects.filter(
        Q(pk__in=touched_series.values("study_id")) | Q(pk__in=sel.whole_studies().values("pk"))
    )
    going = Counter(whole_series_qs.values_list("study_id", flat=True))  # study pk -> its series that go
    study_totals = dict(touched_studies.values_list("pk", "num_series"))
    whole_studies = {pk for pk, n in going.items() if n >= study_totals.get(pk, 0)}
    whole_studies |= set(sel.whole_studies().values_list("pk", flat=True))
    return Scope(
        instances=rows,
        series=Series.objects.filter(Q(pk__in=whole_series_qs.values("pk")) | Q(study_id__in=whole_studies)),
        studies=Study.objects.filter(pk__in=whole_studies),
        touched_studies=touched_studies,
    )


def summary(*, patients=(), studies=(), series=(), instances=()) -> Summary:
    """What deleting these (primary keys) takes."""
    return summarize(selection(patients=patients, studies=studies, series=series, instances=instances))


def summarize(sel: Selection) -> Summary:
    scope = scope_of(sel)
    totals = scope.instances.aggregate(n=Count("pk"), size=Sum("file_size"))
    whole = list(scope.studies.values_list("pk", "patient_record_id"))
    whole_pks = {pk for pk, _ in whole}
    going = Counter(patient for _, patient in whole)  # patient pk -> its studies that go
    patients = {
        pk
        for pk, total in Patient.objects.filter(Q(pk__in=set(going)) | Q(pk__in=sel.patients)).values_list(
            "pk", "num_studies"
        )
        if going[pk] >= total
    }
    touched = list(scope.touched_studies.values_list("pk", "study_instance_uid"))
    result = Summary(
        patients=len(patients),
        studies=len(whole_pks),
        series=scope.series.count(),
        instances=totals["n"] or 0,
        bytes=totals["size"] or 0,
        partial_studies=sum(1 for pk, _ in touched if pk not in whole_pks),
        study_uids=sorted(uid for _, uid in touched),
    )
    result.active_transfers = _active_transfers(scope)
    result.impacts.append(("queued or running transfers", result.active_transfers))
    for name, (label, counter) in _impacts().items():
        try:
            n = counter(scope)
        except Exception:
            logger.exception("deletion impact %s failed", name)
            continue
        if hasattr(result, name):
            setattr(result, name, n)
        result.impacts.append((label, n))
    return result


def _active_transfers(scope) -> int:
    """Send jobs, queued or running, that send something of `scope`."""
    jobs = list(
        TransferJob.objects.filter(
            kind=TransferKind.SEND, state__in=[TransferState.QUEUED, TransferState.RUNNING]
        ).values_list("pk", "level", "uids")
    )
    if not jobs:
        return 0
    wanted = {level: set() for level in TransferLevel.values}
    for _, level, uids in jobs:
        wanted.setdefault(level, set()).update(uids or [])
    hit = {
        TransferLevel.STUDY: set(
            scope.touched_studies.filter(study_instance_uid__in=wanted[TransferLevel.STUDY]).values_list(
                "study_instance_uid", flat=True
            )
        ),
        TransferLevel.SERIES: set(
            Series.objects.filter(
                series_instance_uid__in=wanted[TransferLevel.SERIES],
                pk__in=scope.instances.values("series_id"),
            ).values_list("series_instance_uid", flat=True)
        ),
        TransferLevel.IMAGE: set(
            scope.instances.filter(sop_instance_uid__in=wanted[TransferLevel.IMAGE]).values_list(
                "sop_instance_uid", flat=True
            )
        ),
    }
    return sum(1 for _, level, uids in jobs if hit.get(level, set()) & set(uids or []))


# --- Deleting --------------------------------------------------------------------------------


def delete(sel: Selection, *, actor, actor_kind="user", reason="", address="") -> Deleted:
    """Delete the selection's rows in one transaction, then their files
    (see the module's docstring).  One audit event."""
    with transaction.atomic():
        what = summarize(sel)
        rows = sel.instance_rows()
        instances = list(rows.values_list("pk", "sop_instance_uid", "series_id"))
        uids = [uid for _, uid, _ in instances]
        touched_series = {series for _, _, series in instances}
        whole_studies = list(sel.whole_studies().values_list("pk", "study_instance_uid", "patient_record_id"))
        patient_ids = set(Patient.objects.filter(pk__in=sel.patients).values_list("pk", flat=True))
        patient_ids |= {p for _, _, p in whole_studies}
        patient_ids |= set(
            Study.objects.filter(series__pk__in=touched_series).values_list("patient_record_id", flat=True)
        )
        touched_patient_ids = set(Patient.objects.filter(pk__in=patient_ids).values_list("patient_id", flat=True))
        tombstones.bury(uids)
        for start in range(0, len(instances), tombstones.BATCH):
            Instance.objects.filter(pk__in=[pk for pk, _, _ in instances[start : start + tombstones.BATCH]]).delete()
        # Counters from the rows left; series, studies and patients left
        # empty go (a series chosen whole has none left).
        touched_series = sorted(touched_series | set(sel.series))
        for start in range(0, len(touched_series), tombstones.BATCH):
            recount(series_ids=touched_series[start : start + tombstones.BATCH])
        Study.objects.filter(pk__in=[pk for pk, _, _ in whole_studies]).delete()
        _recount_patients(patient_ids)
        Patient.objects.filter(pk__in=patient_ids, studies__isnull=True).delete()
        result = Deleted(
            patients=what.patients,
            studies=what.studies,
            series=what.series,
            instances=len(instances),
            bytes=what.bytes,
            study_uids=what.study_uids,
        )
        # In a savepoint: an audit row that cannot be written is logged
        # (by record(), or here when the savepoint fails) and must not
        # break the deletion's transaction.
        try:
            with transaction.atomic():
                record(
                    Action.DELETE,
                    actor=actor,
                    actor_kind=actor_kind,
                    address=address,
                    patient_id=next(iter(touched_patient_ids)) if len(touched_patient_ids) == 1 else "",
                    study_uid=what.study_uids[0] if len(what.study_uids) == 1 else "",
                    description=f"deleted {result.describe()}"[:255],
                    details={
                        "patients": result.patients,
                        "studies": result.studies,
                        "series": result.series,
                        "instances": result.instances,
                        "bytes": result.bytes,
                        "partial_studies": what.partial_studies,
                        "study_uids": what.study_uids[:AUDIT_UIDS],
                        "reason": reason,
                    },
                )
        except DatabaseError:
            logger.exception("the audit event of a deletion by %s could not be written", actor)
        # Unlinked once the rows are gone for good (at the outermost commit).
        transaction.on_commit(lambda: _unlink(uids))
    logger.info("%s deleted %s", actor, result.describe())
    return result


def _recount_patients(patient_pks):
    for pk in patient_pks:
        n = Study.objects.filter(patient_record_id=pk).count()
        Patient.objects.filter(pk=pk).exclude(num_studies=n).update(num_studies=n)


def _unlink(uids):
    try:
        files, size = tombstones.unlink_pending(uids)
    except Exception:
        # The tombstones stay: runscp's next start or `archive verify` unlinks them.
        logger.exception("deleted rows committed, but their files could not be unlinked yet")
        return
    logger.info("unlinked %d files (%.1f MB) of deleted instances", files, size / 2**20)


# Rows chosen per transaction when a deletion names many (the command's
# --older-than, recycling, retention rules, a long admin selection): one
# list of 32,767 or more pks is past SQLite's limit of query parameters,
# and one transaction of 100,000 instances held the write lock, and so
# runscp's stores, for about 16 s.  Each batch is deleted as `delete`
# deletes (its own transaction and audit event).
CHOSEN_PER_TRANSACTION = 200


def delete_chosen(kind, pks, **kwargs) -> Deleted:
    """Delete the rows of `kind` ("patients", "studies", …) `pks`, in batches."""
    pks = list(pks)
    if len(pks) <= CHOSEN_PER_TRANSACTION:
        return delete(selection(**{kind: pks}), **kwargs)
    total = Deleted()
    for start in range(0, len(pks), CHOSEN_PER_TRANSACTION):
        add_counts(total, delete(selection(**{kind: pks[start : start + CHOSEN_PER_TRANSACTION]}), **kwargs))
    return total


def add_counts(total, part):
    """Add a batch's counts (a Deleted or a Summary) to `total`, of the same kind."""
    for name in ("patients", "studies", "series", "instances", "bytes"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.study_uids += part.study_uids
    if isinstance(total, Summary):
        total.partial_studies += part.partial_studies


def delete_patients(pks, **kwargs) -> Deleted:
    return delete_chosen("patients", pks, **kwargs)


def delete_studies(pks, **kwargs) -> Deleted:
    return delete_chosen("studies", pks, **kwargs)


def delete_series(pks, **kwargs) -> Deleted:
    return delete_chosen("series", pks, **kwargs)


def delete_instances(pks, **kwargs) -> Deleted:
    return delete_chosen("instances", pks, **kwargs)


# --- For recycling and retention -------------------------------------------------------------


def is_receiving(study, *, now=None) -> bool:
    """Whether `study` (a Study or its pk) is still being received: an
    instance of it arrived within RECEIVING_QUIET, or an association that
    stored into it is still open and stored within OPEN_ASSOCIATION_LIMIT.
    An administrator may delete such a study; recycling may not."""
    now = now or timezone.now()
    pk = getattr(study, "pk", study)
    instances = Instance.objects.filter(series__study_id=pk)
    if instances.filter(received_at__gte=now - RECEIVING_QUIET).exists():
        return True
    return instances.filter(
        association__result=AssociationResult.OPEN, received_at__gte=now - OPEN_ASSOCIATION_LIMIT
    ).exists()


def last_received(studies=None):
    """Studies annotated with `last_received_at` (their newest instance)."""
    studies = Study.objects.all() if studies is None else studies
    return studies.annotate(last_received_at=Max("series__instances__received_at"))


def studies_older_than(days, *, now=None):
    """Studies whose newest instance was received more than `days` days ago."""
    cutoff = (now or timezone.now()) - timedelta(days=days)
    return last_received().filter(last_received_at__lt=cutoff)
