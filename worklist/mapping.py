"""HL7 orders and patient segments -> WorklistItem fields (IHE RAD-4, docs/hl7-mapping.md).

Every function returns only what the message carries: a field left empty is
absent (an update keeps the stored value), a field sent as "" (the HL7 null)
maps to "" (an update clears it). Defaults for new items are in orders.py.
"""

from dataclasses import dataclass, field

from dicomnodes.validators import is_valid_ae_title
from worklist.er7 import Segment, parse_dtm
from worklist.models import ItemStatus, WorklistItem

# HL7 table 0357, message error condition codes.
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_VERSION_ID = 203
UNKNOWN_KEY_IDENTIFIER = 204
DUPLICATE_KEY_IDENTIFIER = 205
APPLICATION_INTERNAL_ERROR = 207
ERROR_NAMES = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class ProcessingError(Exception):
    """The message is understood but cannot be applied: ACK AE."""

    ack_code = "AE"

    def __init__(self, text: str, *, code: int = APPLICATION_INTERNAL_ERROR, location: str = ""):
        super().__init__(text)
        self.code = code
        self.location = location  # e.g. "PID-3"


class Rejected(ProcessingError):
    """The message is not one we take (type, version, syntax): ACK AR."""

    ack_code = "AR"


# ORC-1 order control codes (HL7 table 0119) and what they do.
CREATE = "NW"
UPDATES = ("XO", "SC")
CANCELS = {
    "CA": ItemStatus.CANCELLED,
    "OC": ItemStatus.CANCELLED,
    "DC": ItemStatus.DISCONTINUED,
    "OD": ItemStatus.DISCONTINUED,
}
# ORC-5 order status (HL7 table 0038) of an SC message -> item status.
ORDER_STATUS = {
    "SC": ItemStatus.SCHEDULED,
    "IP": ItemStatus.IN_PROGRESS,
    "CM": ItemStatus.COMPLETED,
    "CA": ItemStatus.CANCELLED,
    "DC": ItemStatus.DISCONTINUED,
}
# TQ-6 / TQ1-9 priority (HL7 table 0027 / 0485) -> Requested Procedure Priority (0040,1003).
PRIORITY = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "HIGH", "R": "ROUTINE", "T": "MEDIUM"}
# PID-8 administrative sex (HL7 table 0001) -> Patient's Sex (0010,0040).
SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}

# Identifiers that are wrong when cut short (matching would go astray): too long is an error.
_MAX_LENGTH = {
    name: WorklistItem._meta.get_field(name).max_length
    for name in (
        "patient_id",
        "issuer_of_patient_id",
        "placer_order_number",
        "filler_order_number",
        "accession_number",
        "requested_procedure_id",
        "scheduled_procedure_step_id",
        "study_instance_uid",
    )
}


@dataclass
class OrderGroup:
    """An ORC and the segments of its order up to the next ORC."""

    orc: Segment
    obr: Segment | None = None
    tq1: Segment | None = None
    zds: Segment | None = None
    ipcs: list[Segment] = field(default_factory=list)

    @property
    def control(self) -> str:
        return self.orc.get(1).upper()


def order_groups(segments: list[Segment]) -> list[OrderGroup]:
    groups: list[OrderGroup] = []
    for seg in segments:
        if seg.name == "ORC":
            groups.append(OrderGroup(seg))
        elif groups and seg.name == "IPC":
            groups[-1].ipcs.append(seg)
        elif groups and seg.name in ("OBR", "TQ1", "ZDS") and getattr(groups[-1], seg.name.lower()) is None:
            setattr(groups[-1], seg.name.lower(), seg)
    return groups


def first(segments: list[Segment], name: str) -> Segment | None:
    return next((s for s in segments if s.name == name), None)


def _pick(*places):
    """The first (segment, field, component) that the message fills (or nulls)."""
    for seg, n, comp in places:
        if seg is not None and (seg.get(n, comp) or seg.is_null(n)):
            return seg, n, comp
    return None


def _where(place) -> str:
    seg, n, comp = place
    return f"{seg.name}-{n}" + (f".{comp}" if comp > 1 else "")


def _check_length(values: dict, name: str, location: str):
    limit = _MAX_LENGTH[name]
    if len(values.get(name, "")) > limit:
        raise ProcessingError(
            f"{location} has {len(values[name])} characters; at most {limit} fit",
            code=DATA_TYPE_ERROR,
            location=location,
        )


def _is_uid(text: str) -> bool:
    return all(part.isdigit() and (part == "0" or part[0] != "0") for part in text.split("."))


def _cut(text: str, name: str) -> str:
    return text[: WorklistItem._meta.get_field(name).max_length]


def _text(text: str) -> str:
    # A backslash separates DICOM values; it cannot be part of one.
    return text.replace("\\", "/")


# --- Names: HL7 XPN / XCN / CNN -> DICOM PN family^given^middle^prefix^suffix ----------------


def _pn(family, given, middle, prefix, suffix) -> str:
    parts = [
        p.replace("^", " ").replace("=", " ").replace("\\", " ").strip()
        for p in (family, given, middle, prefix, suffix)
    ]
    return "^".join(parts).rstrip("^")


def person_name(seg: Segment, n: int) -> str:
    """XPN (PID-5: family^given^middle^suffix^prefix), first repetition with a family name."""
    rep = seg.first_rep(n)
    family, given, middle, suffix, prefix = (seg.get(n, c, rep=rep) for c in range(1, 6))
    return _cut(_pn(family, given, middle, prefix, suffix), "patient_name")


def staff_name(seg: Segment, n: int) -> str:
    """XCN (OBR-16, PV1-8: id^family^given^middle^suffix^prefix), first repetition."""
    family, given, middle, suffix, prefix = (seg.get(n, c) for c in range(2, 7))
    return _cut(_pn(family, given, middle, prefix, suffix), "referring_physician_name")


def ndl_name(seg: Segment, n: int) -> str:
    """NDL (OBR-34): its first component is a CNN whose parts are subcomponents."""
    family, given, middle, suffix, prefix = (seg.get(n, 1, s) for s in range(2, 7))
    return _cut(_pn(family, given, middle, prefix, suffix), "scheduled_performing_physician_name")


# --- Patient ---------------------------------------------------------------------------------


def _date(place, *, what: str) -> tuple[str, str]:
    seg, n, comp = place
    try:
        return parse_dtm(seg.get(n, comp)) if seg.get(n, comp) else ("", "")
    except ValueError as exc:
        raise ProcessingError(
            f"{what} in {_where(place)}: {exc}", code=DATA_TYPE_ERROR, location=_where(place)
        ) from None


def patient_values(pid: Segment) -> dict:
    """Patient ID, issuer, name, birth date and sex present in PID."""
    values = {}
    if pid.raw(3):
        rep = pid.first_rep(3)
        values["patient_id"] = pid.get(3, 1, rep=rep)
        values["issuer_of_patient_id"] = pid.get(3, 4, rep=rep)
        _check_length(values, "patient_id", "PID-3")
        _check_length(values, "issuer_of_patient_id", "PID-3.4")
    if pid.raw(5):
        values["patient_name"] = person_name(pid, 5)
    if pid.raw(7):
        # A birth date given only as year or month has no DICOM DA form: stored empty.
        values["patient_birth_date"] = _date((pid, 7, 1), what="birth date")[0]
    if pid.raw(8):
        # Codes outside table 0001 are stored as unknown rather than refused.
        values["patient_sex"] = SEX.get(pid.get(8).upper(), "")
    return values


def require_patient_id(pid: Segment | None) -> str:
    patient_id = pid.get(3, 1, rep=pid.first_rep(3)) if pid is not None else ""
    if not patient_id:
        raise ProcessingError("PID-3 (patient ID) is missing", code=REQUIRED_FIELD_MISSING, location="PID-3")
    return patient_id


# --- Orders ----------------------------------------------------------------------------------


def order_keys(group: OrderGroup) -> dict:
    """Placer order number, filler order number and accession number used to find the order."""
    orc, obr, ipc = group.orc, group.obr, group.ipcs[0] if group.ipcs else None
    keys = {}
    for name, places in (
        ("placer_order_number", [(orc, 2, 1), (obr, 2, 1)]),
        ("filler_order_number", [(orc, 3, 1), (obr, 3, 1)]),
        ("accession_number", [(ipc, 1, 1), (obr, 18, 1)]),
    ):
        if place := _pick(*places):
            keys[name] = place[0].get(place[1], place[2])
            _check_length(keys, name, _where(place))
    return keys


def _code(values: dict, prefix: str, seg: Segment, n: int, first_component: int) -> str:
    """A CE/CWE (code^text^scheme) into <prefix>_code_value/_scheme/_meaning; returns the text."""
    meaning = _cut(_text(seg.get(n, first_component + 1)), f"{prefix}_code_meaning")
    values[f"{prefix}_code_value"] = _cut(_text(seg.get(n, first_component)), f"{prefix}_code_value")
    values[f"{prefix}_code_scheme"] = _cut(_text(seg.get(n, first_component + 2)), f"{prefix}_code_scheme")
    values[f"{prefix}_code_meaning"] = meaning
    return meaning


def order_values(group: OrderGroup, ipc: Segment | None, pv1: Segment | None) -> dict:
    """Everything but the patient that one scheduled step (an IPC, or the OBR) carries.

    IPC fields come first where IHE RAD-4 puts them in OMI (2.5.1); OBR/ORC
    are the ORM (2.3.1) places and the fall-backs.
    """
    orc, obr, tq1, zds = group.orc, group.obr, group.tq1, group.zds
    values = order_keys(group)
    if ipc is not None and ipc.get(1):
        values["accession_number"] = ipc.get(1)
        _check_length(values, "accession_number", "IPC-1")
    for name, places in (
        ("requested_procedure_id", [(ipc, 2, 1), (obr, 19, 1)]),
        ("scheduled_procedure_step_id", [(ipc, 4, 1), (obr, 20, 1)]),
        ("study_instance_uid", [(ipc, 3, 1), (zds, 1, 1)]),
    ):
        if place := _pick(*places):
            values[name] = place[0].get(place[1], place[2])
            _check_length(values, name, _where(place))
            if name == "study_instance_uid" and values[name] and not _is_uid(values[name]):
                raise ProcessingError(
                    f"{_where(place)} {values[name]!r} is not a DICOM UID", code=DATA_TYPE_ERROR, location=_where(place)
                )

    if place := _pick((ipc, 5, 1), (obr, 24, 1)):
        values["modality"] = _text(place[0].get(place[1])).upper()[:16]
    if place := _pick((ipc, 9, 1), (orc, 18, 1)):
        ae = place[0].get(place[1])
        if ae and not is_valid_ae_title(ae):
            raise ProcessingError(
                f"{_where(place)} {ae!r} is not a valid AE title", code=DATA_TYPE_ERROR, location=_where(place)
            )
        values["scheduled_station_ae_title"] = ae

    # Scheduled protocol: IPC-6, else OBR-4 -- its alternate code (components 4-6,
    # IHE's "scheduled protocol") when given, else the universal service ID itself.
    if ipc is not None and (ipc.get(6) or ipc.is_null(6)):
        values["scheduled_procedure_step_description"] = _code(values, "scheduled_protocol", ipc, 6, 1)
    elif obr is not None and (obr.get(4) or obr.get(4, 4) or obr.is_null(4)):
        first_component = 4 if obr.get(4, 4) else 1
        values["scheduled_procedure_step_description"] = _code(values, "scheduled_protocol", obr, 4, first_component)
    if place := _pick((obr, 44, 1), (obr, 4, 1)):
        values["requested_procedure_description"] = _code(values, "requested_procedure", obr, place[1], 1)

    if place := _pick((tq1, 7, 1), (orc, 7, 4), (obr, 27, 4)):
        date, time = _date(place, what="scheduled start")
        if not date and place[0].get(place[1], place[2]):
            raise ProcessingError(
                f"{_where(place)}: the scheduled start needs at least a full date (YYYYMMDD)",
                code=DATA_TYPE_ERROR,
                location=_where(place),
            )
        values["scheduled_start_date"], values["scheduled_start_time"] = date, time
    if place := _pick((tq1, 9, 1), (orc, 7, 6), (obr, 27, 6)):
        code = place[0].get(place[1], place[2]).upper()
        values["requested_procedure_priority"] = PRIORITY.get(code, "")

    if place := _pick((obr, 16, 2), (orc, 12, 2)):
        values["requesting_physician"] = staff_name(place[0], place[1])
    if pv1 is not None and (pv1.get(8, 2) or pv1.is_null(8)):
        values["referring_physician_name"] = staff_name(pv1, 8)
    if obr is not None and (obr.get(34, 1, 2) or obr.is_null(34)):
        values["scheduled_performing_physician_name"] = ndl_name(obr, 34)
    return values


def order_status(group: OrderGroup) -> ItemStatus | None:
    """The item status an SC message's ORC-5 asks for (None: unchanged)."""
    return ORDER_STATUS.get(group.orc.get(5).upper())
