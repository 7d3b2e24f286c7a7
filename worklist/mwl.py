"""Modality Worklist C-FIND (PS3.4 K.6): worklist items -> response identifiers.

Network-free like dicomnodes.query.matching, and built on its matching rules.
Matching keys: ScheduledStationAETitle, ScheduledProcedureStepStartDate
(single value or range), ScheduledProcedureStepStartTime, Modality,
ScheduledPerformingPhysicianName (in the Scheduled Procedure Step Sequence),
PatientID, PatientName (wildcards; case-insensitive by the DICOM setting),
AccessionNumber, RequestedProcedureID, StudyInstanceUID.  Every other key
of the identifier is returned (empty where we keep nothing).  Cancelled,
discontinued and completed items are never offered.
"""

import warnings
from dataclasses import dataclass

from django.db.models import Q
from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomnodes.dimse import Status, status
from dicomnodes.query.rules import (
    IDENTIFIER_DOES_NOT_MATCH,
    UNABLE_TO_PROCESS,
    QueryError,
    date_range_match,
    has_wildcard,
    is_universal,
    parse_date,
    single_value_match,
    time_range_match,
    time_single_match,
    uid_list_match,
    wildcard_match,
)
from worklist.models import HIDDEN_STATUSES, WorklistItem, WorklistSettings
from worklist.models import WorklistQuery as QueryLog

SPS = "ScheduledProcedureStepSequence"  # (0040,0100)

# keyword -> (column, kind) for the top level and for the SPS item.
# kind: "text" (single value / wildcard), "pn" (person name), "da", "tm", "uid".
TOP_LEVEL = {
    "PatientName": ("patient_name", "pn"),  # (0010,0010)
    "PatientID": ("patient_id", "text"),  # (0010,0020)
    "IssuerOfPatientID": ("issuer_of_patient_id", "text"),  # (0010,0021)
    "PatientBirthDate": ("patient_birth_date", "da"),  # (0010,0030)
    "PatientSex": ("patient_sex", "text"),  # (0010,0040)
    "AccessionNumber": ("accession_number", "text"),  # (0008,0050)
    "ReferringPhysicianName": ("referring_physician_name", "pn"),  # (0008,0090)
    "RequestedProcedureID": ("requested_procedure_id", "text"),  # (0040,1001)
    "RequestedProcedureDescription": ("requested_procedure_description", "text"),  # (0032,1060)
    "RequestedProcedurePriority": ("requested_procedure_priority", "text"),  # (0040,1003)
    "RequestingPhysician": ("requesting_physician", "pn"),  # (0032,1032)
    "StudyInstanceUID": ("study_instance_uid", "uid"),  # (0020,000D)
}
IN_SPS = {
    "ScheduledStationAETitle": ("scheduled_station_ae_title", "text"),  # (0040,0001)
    "ScheduledProcedureStepStartDate": ("scheduled_start_date", "da"),  # (0040,0002)
    "ScheduledProcedureStepStartTime": ("scheduled_start_time", "tm"),  # (0040,0003)
    "Modality": ("modality", "text"),  # (0008,0060)
    "ScheduledPerformingPhysicianName": ("scheduled_performing_physician_name", "pn"),  # (0040,0006)
    "ScheduledProcedureStepDescription": ("scheduled_procedure_step_description", "text"),  # (0040,0007)
    "ScheduledProcedureStepID": ("scheduled_procedure_step_id", "text"),  # (0040,0009)
}
# Code sequences: keyword -> column prefix (CodeValue, CodingSchemeDesignator, CodeMeaning).
CODES = {
    "RequestedProcedureCodeSequence": "requested_procedure_code",  # (0032,1064)
    "ScheduledProtocolCodeSequence": "scheduled_protocol_code",  # (0040,0008), in the SPS item
}


@dataclass
class WorklistQuery:
    identifier: Dataset
    queryset: object
    keys: str  # "Keyword=value" of the matching keys, for the query log


def build_worklist_query(identifier: Dataset, *, case_insensitive: bool = True) -> WorklistQuery:
    """Check the identifier and turn its matching keys into a queryset."""
    q = ~Q(status__in=HIDDEN_STATUSES)
    used = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, (column, kind) in TOP_LEVEL.items():
            q &= _condition(identifier, keyword, column, kind, case_insensitive, used)
        items = identifier.get(SPS)
        if items is not None and not isinstance(items, Sequence):
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"{SPS} is not a sequence")
        if items:
            if len(items) > 1:
                raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"{SPS} with more than one item")
            for keyword, (column, kind) in IN_SPS.items():
                q &= _condition(items[0], keyword, column, kind, case_insensitive, used)
    queryset = WorklistItem.objects.filter(q).order_by("scheduled_start_date", "scheduled_start_time", "pk")
    return WorklistQuery(identifier, queryset, " ".join(used))


def _condition(ds, keyword, column, kind, case_insensitive, used):
    if keyword not in ds:
        return Q()
    try:
        value = ds[keyword].value
    except (ValueError, TypeError) as exc:
        raise QueryError(UNABLE_TO_PROCESS, f"unreadable value of {keyword}") from exc
    text = "" if value is None else str(value).strip()
    if is_universal(text):
        return Q()
    used.append(f"{keyword}={text}")
    if kind == "uid":
        return uid_list_match(column, [u.strip() for u in text.split("\\") if u.strip()])
    if kind == "da":
        return date_range_match(column, text) if "-" in text else single_value_match(column, parse_date(text))
    if kind == "tm":
        return time_range_match(column, text) if "-" in text else time_single_match(column, text)
    if kind == "pn" and case_insensitive and column == "patient_name":
        column, text = "patient_name_upper", text.upper()  # the only name kept upper-cased too
    return wildcard_match(column, text) if has_wildcard(text) else single_value_match(column, text)


def iter_worklist_results(query: WorklistQuery):
    """One response identifier per item: the requested keys, filled."""
    for item in query.queryset.iterator(chunk_size=200):
        yield response_for(item, query.identifier)


def response_for(item: WorklistItem, identifier: Dataset) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = _charset_for(item)
    for elem in identifier:
        keyword = elem.keyword
        if keyword in ("SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        if keyword == SPS:
            ds.ScheduledProcedureStepSequence = Sequence([_sps_item(item, elem.value[0] if elem.value else Dataset())])
        elif keyword in TOP_LEVEL:
            setattr(ds, keyword, getattr(item, TOP_LEVEL[keyword][0]))
        elif keyword in CODES:
            setattr(ds, keyword, _code_sequence(item, CODES[keyword]))
        else:
            ds.add_new(elem.tag, elem.VR, None)  # requested, not kept: returned empty
    return ds


def _sps_item(item, requested):
    """The SPS item with the requested keys; a zero-item sequence asks for
    all of them (PS3.4 C.2.2.2.6)."""
    out = Dataset()
    keys = [e.keyword for e in requested] if len(requested) else [*IN_SPS, "ScheduledProtocolCodeSequence"]
    for keyword in keys:
        if keyword in IN_SPS:
            setattr(out, keyword, getattr(item, IN_SPS[keyword][0]))
        elif keyword in CODES:
            setattr(out, keyword, _code_sequence(item, CODES[keyword]))
        elif keyword:
            elem = requested[keyword]
            out.add_new(elem.tag, elem.VR, None)
    return out


def _code_sequence(item, prefix):
    value = getattr(item, f"{prefix}_value")
    if not value:
        return Sequence([])
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = getattr(item, f"{prefix}_scheme") or "L"
    code.CodeMeaning = getattr(item, f"{prefix}_meaning") or value
    return Sequence([code])


_TEXT_FIELDS = (
    "patient_name",
    "referring_physician_name",
    "requesting_physician",
    "scheduled_performing_physician_name",
    "requested_procedure_description",
    "scheduled_procedure_step_description",
    "requested_procedure_code_meaning",
    "scheduled_protocol_code_meaning",
)


def _charset_for(item):
    """The item's own character set when all its texts fit in it, else UTF-8
    (ISO_IR 192); plain ASCII needs none."""
    text = "".join(getattr(item, f) for f in _TEXT_FIELDS)
    if text.isascii():
        return item.specific_character_set or ""
    charset = item.specific_character_set
    if charset and charset != "ISO_IR 192":
        try:
            text.encode(convert_encodings([charset])[0])
            return charset
        except (UnicodeEncodeError, LookupError):
            pass
    return "ISO_IR 192"


def answer_find(identifier, *, caller, config, cancelled):
    """Modality Worklist C-FIND, as runscp's responder for the WORKLIST model
    (registered in WorklistConfig.ready): yields (status, identifier or None)
    like `dicomnodes.scp.qr.answer_find`.  Each query is logged when the
    worklist settings say so."""
    matches, outcome, keys = 0, "0000", ""
    try:
        query = build_worklist_query(identifier, case_insensitive=config.case_insensitive_names)
        keys = query.keys
        for result in iter_worklist_results(query):
            if cancelled():
                outcome = "FE00"
                yield Status.CANCEL, None
                return
            matches += 1
            yield Status.PENDING, result
    except QueryError as exc:
        outcome = f"{exc.status:04X}"
        yield status(exc.status, exc.message), None
    finally:
        if WorklistSettings.load().message_logging:
            QueryLog.objects.create(
                calling_ae=caller.ae_title[:16],
                peer_address=caller.address[:64],
                keys=keys,
                matches=matches,
                status=outcome,
            )
