"""Patients, studies and series for incoming instances, and their counters.

The index writer calls these inside its transaction.  A `HierarchyCache`
remembers the rows it has seen, so that a series that keeps receiving
images costs no lookups; a stale entry (a row deleted meanwhile) makes the
transaction fail on its foreign key, and the writer then clears the cache
and retries.
"""

from collections import Counter

from django.db.models import Count, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce

from dicomnodes.archive.rawsql import increment
from dicomnodes.models import Instance, Patient, Series, Study
from dicomnodes.signals import NewStudy


class HierarchyCache:
    """uid/key -> row facts, for the rows one writer has seen."""

    def __init__(self, limit=50_000):
        self.limit = limit
        self.clear()

    def clear(self):
        self.patients = {}  # (patient_id, issuer) -> (pk, name, birth date, sex)
        self.studies = {}  # study uid -> pk
        self.series = {}  # series uid -> (pk, study pk)

    def trim(self):
        if len(self.patients) + len(self.studies) + len(self.series) > self.limit:
            self.clear()


class Created:
    """What one batch created, for the counters and the worklist."""

    def __init__(self):
        self.new_studies = []  # a NewStudy per Study row created
        self.studies_per_patient = Counter()
        self.series_per_study = Counter()
        self.studies_with_new_series = set()


def ensure_patients(headers, cache):
    """Patient pk for every (PatientID, Issuer) of `headers`."""
    wanted = {}
    for h in headers:
        wanted.setdefault((h.patient_id, h.issuer_of_patient_id), h)
    missing = [key for key in wanted if key not in cache.patients]
    if missing:
        _load_patients(missing, cache)
        new = [key for key in missing if key not in cache.patients]
        if new:
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
                    for key in new
                ]
            )
            _load_patients(new, cache)
    # A new instance fills what the patient row lacks and changes nothing it
    # has: anyone may store (the default), so the newest name winning would
    # let anyone rename a patient.  Study rows keep the demographics they
    # were created with; corrections are an administrator's act.
    for key, h in wanted.items():
        filled = fills_patient(cache.patients[key], h)
        if filled:
            pk = cache.patients[key][0]
            Patient.objects.filter(pk=pk).update(
                patient_name=filled[0],
                patient_name_upper=filled[0].upper(),
                patient_birth_date=filled[1],
                patient_sex=filled[2],
            )
            cache.patients[key] = (pk, *filled)
    return {key: cache.patients[key][0] for key in wanted}


def fills_patient(cached, h):
    """The (name, birth date, sex) that header `h` fills in where the
    patient row `cached` (pk, name, birth date, sex) lacks them, or None
    when it fills nothing."""
    _, name, birth, sex = cached
    filled = (name or h.patient_name, birth or h.patient_birth_date, sex or h.patient_sex)
    return filled if filled != (name, birth, sex) else None


def _load_patients(keys, cache):
    wanted = set(keys)
    rows = Patient.objects.filter(patient_id__in={k[0] for k in keys}).values_list(
        "pk", "patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex"
    )
    for pk, pid, issuer, name, birth, sex in rows:
        if (pid, issuer) in wanted:
            cache.patients[(pid, issuer)] = (pk, name, birth, sex)


def ensure_studies(headers, patients, cache, created, *, known_studies=None):
    """Study pk for every Study Instance UID of `headers`.  A study created
    here is marked as from a known peer when its UID is in `known_studies`
    (None: all are)."""
    wanted = {}
    for h in headers:
        wanted.setdefault(h.study_instance_uid, h)
    missing = [uid for uid in wanted if uid not in cache.studies]
    if missing:
        cache.studies.update(
            Study.objects.filter(study_instance_uid__in=missing).values_list("study_instance_uid", "pk")
        )
        new = [uid for uid in missing if uid not in cache.studies]
        if new:
            rows = [_new_study(wanted[uid], patients) for uid in new]
            for row in rows:
                row.from_known_peer = known_studies is None or row.study_instance_uid in known_studies
            Study.objects.bulk_create(rows)
            for row in rows:
                created.studies_per_patient[row.patient_record_id] += 1
                created.new_studies.append(NewStudy(row.study_instance_uid, row.accession_number, row.from_known_peer))
            cache.studies.update(
                Study.objects.filter(study_instance_uid__in=new).values_list("study_instance_uid", "pk")
            )
    return {uid: cache.studies[uid] for uid in wanted}


def _new_study(h, patients):
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


def ensure_series(headers, studies, cache, created):
    """Series pk for every Series Instance UID of `headers`."""
    wanted = {}
    for h in headers:
        wanted.setdefault(h.series_instance_uid, h)
    missing = [uid for uid in wanted if uid not in cache.series]
    if missing:
        _load_series(missing, cache)
        new = [uid for uid in missing if uid not in cache.series]
        if new:
            rows = [_new_series(wanted[uid], studies) for uid in new]
            Series.objects.bulk_create(rows)
            for row in rows:
                created.series_per_study[row.study_id] += 1
                created.studies_with_new_series.add(row.study_id)
            _load_series(new, cache)
    return {uid: cache.series[uid][0] for uid in wanted}


def _load_series(uids, cache):
    for uid, pk, study_pk in Series.objects.filter(series_instance_uid__in=uids).values_list(
        "series_instance_uid", "pk", "study_id"
    ):
        cache.series[uid] = (pk, study_pk)


def _new_series(h, studies):
    return Series(
        series_instance_uid=h.series_instance_uid,
        study_id=studies[h.study_instance_uid],
        modality=h.modality,
        series_number=h.series_number,
        series_description=h.series_description,
        body_part_examined=h.body_part_examined,
        series_date=h.series_date,
        series_time=h.series_time,
        institution_name=h.institution_name,
        station_name=h.station_name,
    )


def add_to_counters(instances_per_series, created, series_study):
    """Increment the counters by what this batch added.

    `instances_per_series`: series pk -> new instances; `series_study`:
    series pk -> study pk.  Exact because the batch runs in one transaction
    that saw which rows it created (a concurrent creator makes it fail and
    retry).
    """
    instances_per_study = Counter()
    for series_pk, n in instances_per_series.items():
        increment(Series, series_pk, num_instances=n)
        instances_per_study[series_study[series_pk]] += n
    for study_pk in set(instances_per_study) | set(created.series_per_study):
        increment(
            Study,
            study_pk,
            num_instances=instances_per_study[study_pk],
            num_series=created.series_per_study[study_pk],
        )
    for patient_pk, n in created.studies_per_patient.items():
        increment(Patient, patient_pk, num_studies=n)
    if created.studies_with_new_series:
        refresh_modalities(created.studies_with_new_series)


def refresh_modalities(study_ids):
    modalities = {}
    for study_id, modality in (
        Series.objects.filter(study_id__in=study_ids)
        .order_by("modality")
        .values_list("study_id", "modality")
        .distinct()
    ):
        if modality:
            modalities.setdefault(study_id, []).append(modality)
    current = dict(Study.objects.filter(pk__in=study_ids).values_list("pk", "modalities_in_study"))
    for study_id, old in current.items():
        new = "\\".join(modalities.get(study_id, []))[:128]
        if new != old:
            Study.objects.filter(pk=study_id).update(modalities_in_study=new)


def recount(*, series_ids):
    """Recompute the counters of these series, their studies and patients
    from the rows, and remove series, studies and patients left empty (an
    overwrite that moved an instance elsewhere).  The slow, always-right path."""
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
    per_study = Series.objects.filter(study_id=OuterRef("pk")).order_by().values("study_id")
    Study.objects.filter(pk__in=study_ids).update(
        num_series=Coalesce(Subquery(per_study.annotate(n=Count("pk")).values("n")[:1]), 0),
        num_instances=Coalesce(Subquery(per_study.annotate(n=Sum("num_instances")).values("n")[:1]), 0),
    )
    refresh_modalities(study_ids)
    patient_ids = set(Study.objects.filter(pk__in=study_ids).values_list("patient_record_id", flat=True))
    Study.objects.filter(pk__in=study_ids, num_series=0).delete()
    per_patient = Study.objects.filter(patient_record_id=OuterRef("pk")).order_by().values("patient_record_id")
    Patient.objects.filter(pk__in=patient_ids).update(
        num_studies=Coalesce(Subquery(per_patient.annotate(n=Count("pk")).values("n")[:1]), 0)
    )
    Patient.objects.filter(pk__in=patient_ids, num_studies=0).delete()
