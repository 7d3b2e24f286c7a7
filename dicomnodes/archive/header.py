"""Read what the index needs from a stored file, and nothing more.

Parsing stops at the first tag past (0020,0013) Instance Number: every
attribute we index lives before it, so pixel data, private blocks after
group 0020 and big sequences are never decoded.
"""

import io
import logging
import re
import warnings
from dataclasses import dataclass

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial

logger = logging.getLogger(__name__)

_LAST_TAG = 0x00200013

# keyword -> tag of every attribute the index stores (the header is read up
# to _LAST_TAG only); all read as text and normalised below.
_WANTED = {
    "SpecificCharacterSet": 0x00080005,
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyDate": 0x00080020,
    "SeriesDate": 0x00080021,
    "StudyTime": 0x00080030,
    "SeriesTime": 0x00080031,
    "AccessionNumber": 0x00080050,
    "Modality": 0x00080060,
    "InstitutionName": 0x00080080,
    "ReferringPhysicianName": 0x00080090,
    "StationName": 0x00081010,
    "StudyDescription": 0x00081030,
    "SeriesDescription": 0x0008103E,
    "PatientName": 0x00100010,
    "PatientID": 0x00100020,
    "IssuerOfPatientID": 0x00100021,
    "PatientBirthDate": 0x00100030,
    "PatientSex": 0x00100040,
    "BodyPartExamined": 0x00180015,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "StudyID": 0x00200010,
    "SeriesNumber": 0x00200011,
    "InstanceNumber": 0x00200013,
}
_TAGS = list(_WANTED.values())

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DA_RE = re.compile(r"^\d{8}$")
_TM_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


class UnreadableDataset(ValueError):
    """The dataset cannot be understood well enough to be indexed."""


@dataclass(slots=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    specific_character_set: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    series_date: str = ""
    series_time: str = ""
    institution_name: str = ""
    station_name: str = ""
    instance_number: int | None = None


def _stop(tag, vr, length):
    return int(tag) > _LAST_TAG


def read_header(fileobj) -> InstanceHeader:
    """Parse a DICOM file (with preamble and file meta) from a binary file object.

    Raises UnreadableDataset with a reason a person can act on.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = read_partial(fileobj, stop_when=_stop, specific_tags=_TAGS)
            values = {kw: _text(ds, kw) for kw in _WANTED}
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, LookupError) as exc:
        raise UnreadableDataset(f"dataset could not be parsed: {exc}") from exc
    except Exception as exc:  # pydicom raises assorted errors on garbage
        raise UnreadableDataset(f"dataset could not be parsed: {type(exc).__name__}: {exc}") from exc

    meta = ds.file_meta
    return build_header(
        values,
        media_sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
        media_sop_instance_uid=str(meta.get("MediaStorageSOPInstanceUID", "")),
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")),
    )


def build_header(values, *, media_sop_class_uid, media_sop_instance_uid, transfer_syntax_uid) -> InstanceHeader:
    """An InstanceHeader from {keyword: text}; checks the UIDs we index by."""
    sop_instance_uid = values["SOPInstanceUID"] or media_sop_instance_uid
    sop_class_uid = values["SOPClassUID"] or media_sop_class_uid
    transfer_syntax = transfer_syntax_uid
    for name, uid in (
        ("SOP Instance UID", sop_instance_uid),
        ("SOP Class UID", sop_class_uid),
        ("Study Instance UID", values["StudyInstanceUID"]),
        ("Series Instance UID", values["SeriesInstanceUID"]),
    ):
        if not uid:
            raise UnreadableDataset(f"dataset has no {name}")
        if len(uid) > 64 or not _UID_RE.fullmatch(uid):
            raise UnreadableDataset(f"{name} {uid[:70]!r} is not a valid UID")

    return InstanceHeader(
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        specific_character_set=values["SpecificCharacterSet"][:128],
        patient_id=values["PatientID"][:64],
        issuer_of_patient_id=values["IssuerOfPatientID"][:64],
        patient_name=values["PatientName"][:324],
        patient_birth_date=normalise_date(values["PatientBirthDate"]),
        patient_sex=values["PatientSex"][:16],
        study_date=normalise_date(values["StudyDate"]),
        study_time=normalise_time(values["StudyTime"]),
        accession_number=values["AccessionNumber"][:16],
        study_id=values["StudyID"][:16],
        study_description=values["StudyDescription"][:128],
        referring_physician_name=values["ReferringPhysicianName"][:324],
        modality=values["Modality"][:16],
        series_number=_int(values["SeriesNumber"]),
        series_description=values["SeriesDescription"][:128],
        body_part_examined=values["BodyPartExamined"][:16],
        series_date=normalise_date(values["SeriesDate"]),
        series_time=normalise_time(values["SeriesTime"]),
        institution_name=values["InstitutionName"][:128],
        station_name=values["StationName"][:16],
        instance_number=_int(values["InstanceNumber"]),
    )


def read_header_bytes(data: bytes) -> InstanceHeader:
    return read_header(io.BytesIO(data))


def read_header_file(path) -> InstanceHeader:
    with open(path, "rb") as f:
        return read_header(f)


def _text(ds, keyword) -> str:
    elem = ds.get(keyword)
    if elem is None:
        return ""
    value = elem.value if hasattr(elem, "value") else elem
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace").strip(" \x00")
    return str(value).strip(" \x00")


def _int(text: str) -> int | None:
    try:
        value = int(float(text.split("\\")[0])) if text else None
    except (ValueError, OverflowError):  # "abc"; "inf", "1e999"
        return None
    if value is not None and not -(2**31) <= value < 2**31:
        return None
    return value


def normalise_date(text: str) -> str:
    """DA as YYYYMMDD; the ACR-NEMA form YYYY.MM.DD is converted; anything
    else is dropped (kept out of range matching rather than mis-sorted)."""
    text = text.strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    return text if _DA_RE.match(text) else ""


def normalise_time(text: str) -> str:
    """TM padded to HHMMSS[.ffffff] so that text order is time order."""
    text = text.strip().replace(":", "")
    m = _TM_RE.match(text)
    if not m:
        return ""
    hh, mm, ss, frac = m.groups()
    return f"{hh}{mm or '00'}{ss or '00'}{frac or ''}"
