"""Corrections of a patient's or a study's attributes, and merging two
patients (issue 15).  The admin (corrections_admin.py) and the API
(portal/api/corrections.py) call `correct_patient`, `correct_study` and
`merge_patients`; the audit event each writes is the record of the change
(old -> new, who, when).

Files are the truth, so every operation goes the same way:
1. the new values are checked as DICOM (`clean`): a bad one is refused
   with a message per field, before anything is touched;
2. every stored file concerned is rewritten, one at a time and each
   atomically (lifecycle/rewrite.py), its Instance.file_size following in
   batches; a file that cannot be rewritten stops the work, the index keeps
   the old values and the same correction may simply be made again;
3. the index rows follow in one transaction.  A corrected patient gets a
   new row (same values otherwise) and the old one goes: runscp's index
   writer caches patient rows (archive/hierarchy.py), and a cached row that
   no longer exists fails its foreign key and makes the writer re-read,
   where a row changed in place would be used with its old values;
4. instances that arrived in those studies while the files were rewritten
   are rewritten too; then the audit event is written.
"""

import datetime
import logging
import re
from dataclasses import dataclass, field

from django.db import IntegrityError, transaction

from dicomnodes.archive.storage import instance_path
from dicomnodes.lifecycle.rewrite import UTF8, RewriteError, rewrite_file
from dicomnodes.models import DicomServerSettings, Instance, Patient, Study
from pacs_site.audit import Action, record
from pacs_site.models import AuditOutcome

logger = logging.getLogger(__name__)

# model field -> (keyword, VR, maximum length) of what may be corrected
PATIENT_FIELDS = {
    "patient_name": ("PatientName", "PN", 64),  # (0010,0010), 64 per component group
    "patient_id": ("PatientID", "LO", 64),  # (0010,0020)
    "patient_birth_date": ("PatientBirthDate", "DA", 8),  # (0010,0030)
    "patient_sex": ("PatientSex", "CS", 16),  # (0010,0040): M, F or O
}
STUDY_FIELDS = {
    "study_description": ("StudyDescription", "LO", 64),  # (0008,1030)
    "accession_number": ("AccessionNumber", "SH", 16),  # (0008,0050)
    "referring_physician_name": ("ReferringPhysicianName", "PN", 64),  # (0008,0090)
}
_UPPER = {"patient_name": "patient_name_upper", "referring_physician_name": "referring_physician_name_upper"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BATCH = 200  # instances whose file sizes are saved together


class CorrectionError(ValueError):
    """Refused or failed; `errors` holds the messages per field (the API's 400)."""

    def __init__(self, message, *, errors=None):
        super().__init__(message)
        self.errors = errors or {}


@dataclass
class Outcome:
    changes: dict  # field -> [old, new]
    files: int = 0  # rewritten
    missing: int = 0  # index rows whose file was not there
    patient: Patient | None = None
    study: Study | None = None
    studies: list = field(default_factory=list)  # Study Instance UIDs concerned


# --- 1. values ----------------------------------------------------------------------


def _check_value(vr, text, limit):
    """One value as DICOM (PS3.5 6.2); the cleaned text or a ValueError."""
    text = text.strip()
    if vr == "DA":
        if not text:
            return ""
        digits = text.replace("-", "") if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) else text
        try:
            datetime.datetime.strptime(digits, "%Y%m%d")
        except ValueError:
            raise ValueError("A date is YYYYMMDD (or YYYY-MM-DD), a real day.") from None
        if len(digits) != 8:
            raise ValueError("A date is YYYYMMDD (or YYYY-MM-DD), a real day.")
        return digits
    if vr == "CS":
        text = text.upper()
        if text not in ("", "M", "F", "O"):
            raise ValueError("Sex is M, F, O or empty.")
        return text
    if "\\" in text or _CONTROL.search(text):
        raise ValueError("No backslash and no control characters.")
    if vr == "PN":
        groups = text.split("=")
        if len(groups) > 3:
            raise ValueError("A person name has at most 3 component groups (separated by =).")
        for group in groups:
            if len(group) > limit:
                raise ValueError(f"A person name's component group has at most {limit} characters.")
            if group.count("^") > 4:
                raise ValueError("A person name has at most 5 components (separated by ^).")
        return text
    if len(text) > limit:
        raise ValueError(f"At most {limit} characters (this has {len(text)}).")
    return text


def clean(fields, data):
    """{model field: text} checked against `fields` (PATIENT_FIELDS or
    STUDY_FIELDS); the cleaned values, or CorrectionError with every error."""
    cleaned, errors = {}, {}
    for name, value in data.items():
        if name not in fields:
            errors[name] = ["This attribute cannot be corrected here."]
            continue
        if not isinstance(value, str):
            errors[name] = ["Give a text value."]
            continue
        _, vr, limit = fields[name]
        try:
            cleaned[name] = _check_value(vr, value, limit)
        except ValueError as exc:
            errors[name] = [str(exc)]
    if cleaned.get("patient_id", None) == "":
        errors["patient_id"] = ["A patient needs a Patient ID."]
    if errors:
        raise CorrectionError("Some values are not valid DICOM.", errors=errors)
    return cleaned


def planned_changes(row, data):
    """{field: [old, new]} that correcting `row` (a Patient or a Study) with
    `data` would make: checked as DICOM, something to change, and a new
    Patient ID that no other patient has (that would be a merge)."""
    fields = PATIENT_FIELDS if isinstance(row, Patient) else STUDY_FIELDS
    cleaned = clean(fields, data)
    changes = {name: [getattr(row, name), value] for name, value in cleaned.items() if getattr(row, name) != value}
    if not changes:
        raise CorrectionError("Nothing to change: these are the current values.")
    if "patient_id" in changes:
        other = Patient.objects.filter(
            patient_id=changes["patient_id"][1], issuer_of_patient_id=row.issuer_of_patient_id
        ).first()
        if other is not None:
            raise CorrectionError(
                "Another patient has this ID.",
                errors={"patient_id": [f"Patient ID {other.patient_id} belongs to {other}: merge into it instead."]},
            )
    return changes


def _row_values(values):
    """Model columns for {field: value}, with the upper-cased copies."""
    out = dict(values)
    for name, upper in _UPPER.items():
        if name in values:
            out[upper] = values[name].upper()
    return out


# --- what is concerned ----------------------------------------------------------


def files_of_patient(patient) -> int:
    return Instance.objects.filter(series__study__patient_record=patient).count()


def files_of_study(study) -> int:
    return Instance.objects.filter(series__study=study).count()


# --- 2. the files -----------------------------------------------------------------


class _Rewriter:
    """Rewrites the files of some studies with `values` ({keyword: text})."""

    def __init__(self, study_ids, values):
        self.study_ids = list(study_ids)
        self.values = values
        server = DicomServerSettings.load()
        self.fsync = server.fsync_on_store
        self.max_inflated = server.max_inflated_mb << 20
        self.last_pk = 0
        self.files = self.missing = 0

    def run(self):
        """Every instance of the studies not rewritten yet (pk order); True
        if there were any."""
        did = False
        while batch := list(
            Instance.objects.filter(series__study_id__in=self.study_ids, pk__gt=self.last_pk)
            .order_by("pk")
            .values_list("pk", "sop_instance_uid")[:_BATCH]
        ):
            did = True
            sizes = []
            try:
                for pk, uid in batch:
                    try:
                        done = rewrite_file(
                            instance_path(uid), self.values, fsync=self.fsync, max_inflated=self.max_inflated
                        )
                    except FileNotFoundError:
                        logger.warning("correction: instance %s has no file; left as it is", uid)
                        self.missing += 1
                    except (RewriteError, OSError) as exc:
                        raise CorrectionError(
                            f"Instance {uid}: {exc}. {self.files} files were rewritten before it; the index "
                            "still shows the old values: correct again once the cause is fixed."
                        ) from exc
                    else:
                        sizes.append(Instance(pk=pk, file_size=done.size))
                        self.files += 1
                    self.last_pk = pk
            finally:
                Instance.objects.bulk_update(sizes, ["file_size"])
        return did


def _apply(study_ids, values, index_update):
    """Steps 2 to 4: rewrite, `index_update()` in a transaction, late arrivals."""
    rewriter = _Rewriter(study_ids, values)
    rewriter.run()
    with transaction.atomic():
        result = index_update()
    for _ in range(3):  # bounded: a modality may keep sending
        if not rewriter.run():
            break
    return rewriter, result


def _charset_columns(values):
    return {"specific_character_set": UTF8} if any(v and not v.isascii() for v in values.values()) else {}


# --- the three operations -----------------------------------------------------------


def correct_study(study, data, *, actor, address=""):
    """Give a study new StudyDescription / AccessionNumber / ReferringPhysicianName."""
    changes = planned_changes(study, data)
    values = {STUDY_FIELDS[name][0]: new for name, (_, new) in changes.items()}
    columns = _row_values({name: new for name, (_, new) in changes.items()})
    columns.update(_charset_columns(values))

    def index_update():
        Study.objects.filter(pk=study.pk).update(**columns)

    outcome = Outcome(changes, study=study, studies=[study.study_instance_uid])
    _run(
        outcome,
        Action.CORRECT,
        study_ids=[study.pk],
        values=values,
        index_update=index_update,
        actor=actor,
        address=address,
        patient_id=study.patient_id,
        level="study",
    )
    study.refresh_from_db()
    return outcome


def correct_patient(patient, data, *, actor, address=""):
    """Give a patient (all their studies) a new name, ID, birth date or sex;
    IssuerOfPatientID is kept.  A new ID that another patient has is a merge."""
    changes = planned_changes(patient, data)
    values = {PATIENT_FIELDS[name][0]: new for name, (_, new) in changes.items()}
    demographics = {name: getattr(patient, name) for name in PATIENT_FIELDS}
    demographics.update({name: new for name, (_, new) in changes.items()})
    study_ids = list(patient.studies.values_list("pk", flat=True))

    def index_update():
        return _rekey(patient, demographics, charset=_charset_columns(values))

    outcome = Outcome(changes, studies=list(patient.studies.values_list("study_instance_uid", flat=True)))
    _run(
        outcome,
        Action.CORRECT,
        study_ids=study_ids,
        values=values,
        index_update=index_update,
        actor=actor,
        address=address,
        patient_id=demographics["patient_id"],
        level="patient",
    )
    return outcome


def merge_patients(source, target, *, actor, address=""):
    """Move every study of `source` under `target`: the files take the
    target's ID, issuer, name, birth date and sex; `source` disappears."""
    if source.pk == target.pk:
        raise CorrectionError("A patient cannot be merged into itself.")
    names = [*PATIENT_FIELDS, "issuer_of_patient_id"]
    changes = {name: [getattr(source, name), getattr(target, name)] for name in names}
    values = {keyword: getattr(target, name) for name, (keyword, _, _) in PATIENT_FIELDS.items()}
    values["IssuerOfPatientID"] = target.issuer_of_patient_id or None
    study_ids = list(source.studies.values_list("pk", flat=True))
    columns = {name: getattr(target, name) for name in PATIENT_FIELDS}
    columns["patient_name_upper"] = target.patient_name.upper()
    columns.update(_charset_columns(values))

    def index_update():
        moved = Study.objects.filter(patient_record_id=source.pk).update(patient_record_id=target.pk, **columns)
        Patient.objects.filter(pk=target.pk).update(
            num_studies=Study.objects.filter(patient_record_id=target.pk).count(),
            protected=target.protected or source.protected,
        )
        Patient.objects.filter(pk=source.pk).delete()
        return moved

    outcome = Outcome(changes, studies=list(source.studies.values_list("study_instance_uid", flat=True)))
    _run(
        outcome,
        Action.MERGE,
        study_ids=study_ids,
        values=values,
        index_update=index_update,
        actor=actor,
        address=address,
        patient_id=target.patient_id,
        level="merge",
    )
    outcome.patient = Patient.objects.get(pk=target.pk)
    return outcome


def _rekey(old, demographics, *, charset):
    """Step 3 of a patient correction: the patient's new row, its studies
    moved to it with their copies of the demographics, the old row gone."""
    old = Patient.objects.select_for_update().get(pk=old.pk)
    # The unique (ID, issuer) must be free for the new row: the old one
    # takes a placeholder no DICOM value can be (ESC) until it is deleted.
    Patient.objects.filter(pk=old.pk).update(patient_id=f"\x1bcorrecting {old.pk}"[:64])
    new = Patient.objects.create(
        issuer_of_patient_id=old.issuer_of_patient_id,
        num_studies=old.num_studies,
        protected=old.protected,
        **_row_values(demographics),
    )
    Patient.objects.filter(pk=new.pk).update(created_at=old.created_at)
    Study.objects.filter(patient_record_id=old.pk).update(
        patient_record_id=new.pk, **_row_values(demographics), **charset
    )
    Patient.objects.filter(pk=old.pk).delete()
    return new


def _run(outcome, action, *, study_ids, values, index_update, actor, address, patient_id, level):
    """Steps 2-4 and the audit event (also of a failure)."""
    audit = dict(actor=actor, actor_kind="user", address=address, patient_id=patient_id)
    study_uid = outcome.studies[0] if len(outcome.studies) == 1 else ""
    details = {"changes": outcome.changes, "level": level, "studies": outcome.studies[:100]}
    try:
        rewriter, result = _apply(study_ids, values, index_update)
    except IntegrityError as exc:
        error = CorrectionError(
            "The index could not follow (a patient with the new ID was stored meanwhile?): merge into it; "
            f"the files already carry the new values ({exc})."
        )
        _failed(action, audit, study_uid, details, error)
        raise error from exc
    except CorrectionError as exc:
        _failed(action, audit, study_uid, details, exc)
        raise
    outcome.files, outcome.missing = rewriter.files, rewriter.missing
    if isinstance(result, Patient):
        outcome.patient = result
    names = ", ".join(outcome.changes) if action == Action.CORRECT else "all studies moved"
    record(
        action,
        study_uid=study_uid,
        description=f"{level}: {names} ({outcome.files} files)"[:255],
        details={**details, "files": outcome.files, "missing": outcome.missing},
        **audit,
    )


def _failed(action, audit, study_uid, details, error):
    record(
        action,
        outcome=AuditOutcome.SERIOUS_FAILURE,
        study_uid=study_uid,
        description=str(error)[:255],
        details={**details, "error": str(error)},
        **audit,
    )
