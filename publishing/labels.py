"""What a disc says about itself: label merge fields and README.TXT."""

from dataclasses import dataclass, field

from django.apps import apps
from django.utils import timezone


@dataclass
class DiscFacts:
    number: int
    count: int
    patients: list = field(default_factory=list)  # [(name, id, birth date)]
    studies: list = field(default_factory=list)  # [Study]
    modalities: list = field(default_factory=list)
    institution: str = ""
    instance_count: int = 0


def person_name(value: str) -> str:
    """DICOM PN (Family^Given^Middle^Prefix^Suffix, first group) as text."""
    parts = [p for p in value.split("=")[0].split("^") if p]
    return " ".join(parts)


def dicom_date(value: str) -> str:
    if len(value) == 8 and value.isdigit():
        return f"{value[0:4]}-{value[4:6]}-{value[6:8]}"
    return value


def _configured_institution() -> str:
    try:
        return apps.get_model("portal", "HttpSettings").load().institution
    except Exception:  # the portal app or its settings are not there (yet)
        return ""


def disc_facts(instances, *, number, count) -> DiscFacts:
    """Patients, studies, modalities and institution of the instances on one disc."""
    facts = DiscFacts(number=number, count=count, instance_count=len(instances))
    seen_patients, seen_studies = set(), {}
    for instance in instances:
        series, study = instance.series, instance.series.study
        key = (study.patient_id, study.patient_name)
        if key not in seen_patients:
            seen_patients.add(key)
            facts.patients.append((study.patient_name, study.patient_id, study.patient_birth_date))
        seen_studies.setdefault(study.pk, study)
        if series.modality and series.modality not in facts.modalities:
            facts.modalities.append(series.modality)
        if not facts.institution and series.institution_name:
            facts.institution = series.institution_name
    facts.studies = sorted(seen_studies.values(), key=lambda s: (s.study_date, s.study_time))
    facts.institution = _configured_institution() or facts.institution
    return facts


def merge_values(facts: DiscFacts, names) -> list[tuple[str, str]]:
    """(field, value) in the publisher's order; several patients or studies are joined."""
    patients = facts.patients
    values = {
        "patient_name": ", ".join(person_name(p[0]) for p in patients),
        "patient_id": ", ".join(p[1] for p in patients),
        "birth_date": ", ".join(dicom_date(p[2]) for p in patients if p[2]),
        "study_date": ", ".join(dict.fromkeys(dicom_date(s.study_date) for s in facts.studies if s.study_date)),
        "study_description": ", ".join(
            dict.fromkeys(s.study_description for s in facts.studies if s.study_description)
        ),
        "modality": "/".join(facts.modalities),
        "institution": facts.institution,
        "disc": f"Disc {facts.number} of {facts.count}",
    }
    return [(name, values[name]) for name in names if name in values]


def readme_text(facts: DiscFacts, *, ae_title: str) -> str:
    lines = ["DICOM images" + (f" - {facts.institution}" if facts.institution else ""), ""]
    for name, patient_id, birth in facts.patients:
        born = f", born {dicom_date(birth)}" if birth else ""
        lines.append(f"Patient: {person_name(name) or '(no name)'} (ID {patient_id or '-'}){born}")
    lines += ["", "Studies:"]
    for study in facts.studies:
        date = dicom_date(study.study_date) or "(no date)"
        description = study.study_description or "(no description)"
        modalities = study.modalities_in_study.replace("\\", "/")
        accession = f", accession {study.accession_number}" if study.accession_number else ""
        lines.append(f"  {date}  {description}  {modalities}{accession}")
    lines += [
        "",
        f"Disc {facts.number} of {facts.count}: {facts.instance_count} DICOM files.",
        "",
        "The images are DICOM files (PS3.10) in the folder DICOM, listed in the file DICOMDIR",
        "(a DICOM File-set, PS3.10/PS3.12). Open DICOMDIR with a DICOM viewer.",
        "",
        f"Written by {ae_title} on {timezone.localtime():%Y-%m-%d %H:%M}.",
    ]
    return "\n".join(lines) + "\n"
