"""The archive index: rows for stored files, written in group commits.

`apply_batch()` is the plain function that does the work (testable without a
network); `IndexWriter` is the one thread per `runscp` process that calls it
with every job that queued up while the previous transaction ran.  The
C-STORE handler waits for its job, so the sender's success response always
follows a committed row.
"""
import logging
import queue
import threading
from dataclasses import dataclass, field
from datetime import datetime

from django.db import close_old_connections, connection, transaction
from django.db.models import Count, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from dicomnodes.header import InstanceHeader
from dicomnodes.models import AssociationLog, Instance, Patient, Series, Study

logger = logging.getLogger(__name__)


class Outcome:
    STORED = "stored"
    DUPLICATE = "duplicate"  # kept the first copy
    REPLACED = "replaced"  # overwrote the first copy


@dataclass(slots=True)
class IndexItem:
    """One received instance whose file is already on disk."""

    header: InstanceHeader
    file_size: int
    file_is_new: bool  # False: a file was already there and was kept
    overwrite: bool
    called_ae: str = ""
    calling_ae: str = ""
    association_id: object = None
    received_at: datetime = field(default_factory=timezone.now)


@dataclass(slots=True)
class AssociationOpen:
    row: AssociationLog


@dataclass(slots=True)
class AssociationClose:
    association_id: object
    values: dict


def apply_batch(jobs):
    """Apply a list of IndexItem / AssociationOpen / AssociationClose in one
    transaction; returns one result per job (an Outcome for IndexItem, None
    otherwise).

    1. association rows opened in this batch are inserted first (instances
       point at them);
    2. instances are indexed (patients, studies, series created as needed);
    3. closing association rows are updated last.
    """
    opens = [j.row for j in jobs if isinstance(j, AssociationOpen)]
    items = [j for j in jobs if isinstance(j, IndexItem)]
    closes = [j for j in jobs if isinstance(j, AssociationClose)]
    with transaction.atomic():
        if opens:
            AssociationLog.objects.bulk_create(opens, ignore_conflicts=True)
        outcomes = iter(index_instances(items)) if items else iter(())
        for close in closes:
            AssociationLog.objects.filter(pk=close.association_id).update(**close.values)
    return [next(outcomes) if isinstance(j, IndexItem) else None for j in jobs]


def index_instances(items):
    """Create or update the rows of `items`; returns their Outcomes in order.

    1. sort the items into new, duplicate (kept first) and replacing ones;
    2. create the patients, studies and series the new and replacing ones need;
    3. insert and update the instance rows;
    4. recompute the counters, and drop series, studies and patients that a
       replacement left empty.
    """
    existing = dict(
        Instance.objects.filter(sop_instance_uid__in={i.header.sop_instance_uid for i in items}).values_list(
            "sop_instance_uid", "series_id"
        )
    )
    outcomes, seen = [], set()
    for item in items:
        uid = item.header.sop_instance_uid
        if uid in existing or uid in seen:
            outcomes.append(Outcome.REPLACED if item.overwrite and item.file_is_new else Outcome.DUPLICATE)
        else:
            outcomes.append(Outcome.STORED)
        seen.add(uid)
    wanted = [item for item, outcome in zip(items, outcomes) if outcome != Outcome.DUPLICATE]
    if not wanted:
        return outcomes

    headers = [item.header for item in wanted]
    patients = _get_or_create_patients(headers)
    studies = _get_or_create_studies(headers, patients)
    series = _get_or_create_series(headers, studies)

    to_create, touched_series = {}, set()
    for item, outcome in zip(items, outcomes):
        if outcome == Outcome.DUPLICATE:
            continue
        h = item.header
        fields = dict(
            series_id=series[h.series_instance_uid],
            sop_class_uid=h.sop_class_uid,
            instance_number=h.instance_number,
            transfer_syntax_uid=h.transfer_syntax_uid,
            file_size=item.file_size,
            called_ae=item.called_ae,
            calling_ae=item.calling_ae,
            association_id=item.association_id,
            received_at=item.received_at,
        )
        touched_series.add(fields["series_id"])
        if outcome == Outcome.REPLACED and h.sop_instance_uid not in to_create:
            Instance.objects.filter(sop_instance_uid=h.sop_instance_uid).update(**fields)
            if existing.get(h.sop_instance_uid):
                touched_series.add(existing[h.sop_instance_uid])
        else:
            to_create[h.sop_instance_uid] = Instance(sop_instance_uid=h.sop_instance_uid, **fields)
    if to_create:
        # ignore_conflicts: another runscp process may insert the same UID
        # between our SELECT and this INSERT; its row is as good as ours.
        Instance.objects.bulk_create(list(to_create.values()), ignore_conflicts=True)
    refresh_counts(series_ids=touched_series)
    return outcomes


def _get_or_create_patients(headers):
    wanted = {}
    for h in headers:
        wanted.setdefault((h.patient_id, h.issuer_of_patient_id), h)
    found = _patients_by_key(wanted)
    missing = [key for key in wanted if key not in found]
    if missing:
        Patient.objects.bulk_create(
            [
                Patient(
                    patient_id=key[0],
                    issuer_of_patient_id=key[1],
                    patient_name=wanted[key].patient_name,
                    patient_name_upper=wanted[key].patient_name.upper(),
                    patient_birth_date=wanted[key].patient_birth_date,
                    patient_sex=wanted[key].patient_sex,
                )
                for key in missing
            ],
            ignore_conflicts=True,
        )
        found = _patients_by_key(wanted)
    # The newest demographics win (a corrected name arrives with new images).
    for key, h in wanted.items():
        p = found[key]
        new = (h.patient_name, h.patient_birth_date, h.patient_sex)
        if any(new) and new != (p.patient_name, p.patient_birth_date, p.patient_sex):
            Patient.objects.filter(pk=p.pk).update(
                patient_name=h.patient_name,
                patient_name_upper=h.patient_name.upper(),
                patient_birth_date=h.patient_birth_date,
                patient_sex=h.patient_sex,
            )
    return {key: p.pk for key, p in found.items()}


def _patients_by_key(wanted):
    rows = Patient.objects.filter(patient_id__in={k[0] for k in wanted}).only(
        "pk", "patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex"
    )
    return {(p.patient_id, p.issuer_of_patient_id): p for p in rows if (p.patient_id, p.issuer_of_patient_id) in wanted}


def _get_or_create_studies(headers, patients):
    wanted = {}
    for h in headers:
        wanted.setdefault(h.study_instance_uid, h)
    found = dict(Study.objects.filter(study_instance_uid__in=wanted).values_list("study_instance_uid", "pk"))
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        Study.objects.bulk_create([_new_study(wanted[uid], patients) for uid in missing], ignore_conflicts=True)
        found = dict(Study.objects.filter(study_instance_uid__in=wanted).values_list("study_instance_uid", "pk"))
    return found


def _new_study(h: InstanceHeader, patients):
    return Study(
        study_instance_uid=h.study_instance_uid,
        patient_record_id=patients[(h.patient_id, h.issuer_of_patient_id)],
        patient_id=h.patient_id,
        patient_name=h.patient_name,
        patient_name_upper=h.patient_name.upper(),
        patient_birth_date=h.patient_birth_date,
        patient_sex=h.patient_sex,
        study_date=h.study_date,
        study_time=h.study_time,
        accession_number=h.accession_number,
        study_id=h.study_id,
        study_description=h.study_description,
        referring_physician_name=h.referring_physician_name,
        referring_physician_name_upper=h.referring_physician_name.upper(),
        specific_character_set=h.specific_character_set,
    )


def _get_or_create_series(headers, studies):
    wanted = {}
    for h in headers:
        wanted.setdefault(h.series_instance_uid, h)
    found = dict(Series.objects.filter(series_instance_uid__in=wanted).values_list("series_instance_uid", "pk"))
    missing = [uid for uid in wanted if uid not in found]
    if missing:
        Series.objects.bulk_create(
            [
                Series(
                    series_instance_uid=uid,
                    study_id=studies[wanted[uid].study_instance_uid],
                    modality=wanted[uid].modality,
                    series_number=wanted[uid].series_number,
                    series_description=wanted[uid].series_description,
                    body_part_examined=wanted[uid].body_part_examined,
                    series_date=wanted[uid].series_date,
                    series_time=wanted[uid].series_time,
                    institution_name=wanted[uid].institution_name,
                    station_name=wanted[uid].station_name,
                )
                for uid in missing
            ],
            ignore_conflicts=True,
        )
        found = dict(Series.objects.filter(series_instance_uid__in=wanted).values_list("series_instance_uid", "pk"))
    return found


def refresh_counts(*, series_ids):
    """Recompute the counters of the given series and of their studies and
    patients from the rows themselves: correct whatever happened concurrently
    in another process (no lost increments), and cheap on indexed columns.
    Series left without instances (an overwrite moved them) are removed."""
    series_ids = list(series_ids)
    Series.objects.filter(pk__in=series_ids).update(
        num_instances=Coalesce(
            Subquery(
                Instance.objects.filter(series_id=OuterRef("pk"))
                .order_by()
                .values("series_id")
                .annotate(n=Count("pk"))
                .values("n")[:1]
            ),
            0,
        )
    )
    study_ids = set(Series.objects.filter(pk__in=series_ids).values_list("study_id", flat=True))
    Series.objects.filter(pk__in=series_ids, num_instances=0).delete()
    refresh_study_counts(study_ids)


def refresh_study_counts(study_ids):
    study_ids = list(study_ids)
    if not study_ids:
        return
    per_study = Series.objects.filter(study_id=OuterRef("pk")).order_by().values("study_id")
    Study.objects.filter(pk__in=study_ids).update(
        num_series=Coalesce(Subquery(per_study.annotate(n=Count("pk")).values("n")[:1]), 0),
        num_instances=Coalesce(Subquery(per_study.annotate(n=Sum("num_instances")).values("n")[:1]), 0),
    )
    modalities = {}
    for study_id, modality in (
        Series.objects.filter(study_id__in=study_ids).order_by("modality").values_list("study_id", "modality").distinct()
    ):
        if modality:
            modalities.setdefault(study_id, []).append(modality)
    current = dict(Study.objects.filter(pk__in=study_ids).values_list("pk", "modalities_in_study"))
    for study_id, old in current.items():
        new = "\\".join(modalities.get(study_id, []))[:128]
        if new != old:
            Study.objects.filter(pk=study_id).update(modalities_in_study=new)
    patient_ids = set(Study.objects.filter(pk__in=study_ids).values_list("patient_record_id", flat=True))
    Study.objects.filter(pk__in=study_ids, num_series=0).delete()
    Patient.objects.filter(pk__in=patient_ids).update(
        num_studies=Coalesce(
            Subquery(
                Study.objects.filter(patient_record_id=OuterRef("pk")).order_by().values("patient_record_id").annotate(n=Count("pk")).values("n")[:1]
            ),
            0,
        )
    )
    Patient.objects.filter(pk__in=patient_ids, num_studies=0).delete()


class IndexUnavailable(RuntimeError):
    """The index could not be written (database down, locked too long)."""


class _Pending:
    __slots__ = ("job", "done", "result", "error")

    def __init__(self, job):
        self.job = job
        self.done = threading.Event()
        self.result = None
        self.error = None

    def wait(self, timeout):
        if not self.done.wait(timeout):
            raise IndexUnavailable(f"index not written within {timeout:.0f} s")
        if self.error is not None:
            raise IndexUnavailable(str(self.error))
        return self.result


_STOP = object()


class IndexWriter:
    """One thread that commits what every association thread hands it.

    While one transaction runs, new jobs queue up; the next transaction takes
    them all (group commit without an artificial delay, so a lone sender
    waits for nothing but its own commit).
    """

    def __init__(self, *, max_batch=512):
        self.max_batch = max_batch
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self.batches = 0
        self.jobs = 0

    def start(self):
        self._thread.start()
        return self

    def submit(self, job) -> _Pending:
        pending = _Pending(job)
        self._queue.put(pending)
        return pending

    def stop(self, timeout=30):
        """Finish everything queued so far, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self):
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            self._commit(batch)
        connection.close()

    def _commit(self, batch):
        close_old_connections()
        try:
            results = apply_batch([p.job for p in batch])
        except Exception as exc:
            logger.warning("group commit of %d jobs failed (%s); retrying one by one", len(batch), exc)
            connection.close()
            for pending in batch:
                try:
                    pending.result = apply_batch([pending.job])[0]
                except Exception as exc1:
                    logger.exception("index write failed")
                    pending.error = exc1
                pending.done.set()
            return
        self.batches += 1
        self.jobs += len(batch)
        for pending, result in zip(batch, results):
            pending.result = result
            pending.done.set()
