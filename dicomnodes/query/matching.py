"""The C-FIND SCP's query logic, without a network: identifier -> ORM query -> results.

`build_query()` checks an identifier against PS3.4 C.4.1 (levels, unique
keys) and turns its keys into a Django query over the index with the rules
of `matching_rules` (C.2.2.2); `iter_results()` yields one response
identifier per matching row, lazily, so that the handler can check for a
C-CANCEL between two results.

Choices where PS3.4 leaves room (the conformance statement repeats them):

- SOPClassesInStudy (0008,0062) is computed from the study's instances,
  at STUDY level only, and only when asked for (it reads every instance row
  of each answer's study); at SERIES and IMAGE level it is treated as a
  key the index does not store.
- Keys of the query level or above that the index does not store are
  returned zero-length and never restrict the match; so are sequence keys
  and private or unknown attributes.  Keys of a level below the query level
  are refused (A900).
- Non-unique keys of a level above the query level (StudyDate at SERIES
  level, ...) are matched and returned from the parent row.
- A multi-valued key other than a UID list matches when any value does.
- Unique keys of the levels above must be one value without wildcards; the
  unique key of the query level itself may be absent.
- A single TM value matches the whole period it names (`1015`: 10:15:00 to
  10:15:59.999999); ranges are padded the same way.  Combined date-time
  matching (C.2.2.2.5.1, extended negotiation) is not supported: StudyDate
  and StudyTime ranges are matched independently.  No stored key is a DT.
- Responses are in UTF-8 (ISO_IR 192) and always carry RetrieveAETitle;
  InstanceAvailability (always ONLINE) only when it was requested.
"""

import warnings
from dataclasses import dataclass, field

from django.db.models import Aggregate, CharField, Exists, OuterRef, Q, Subquery
from pydicom.charset import convert_encodings
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomnodes.models import Instance, Series
from dicomnodes.net.elements import PADDING
from dicomnodes.query.levels import IMAGE, LEVELS, MODELS, PATIENT, SERIES, STUDY, levels_above
from dicomnodes.query.rules import (
    IDENTIFIER_DOES_NOT_MATCH,
    UNABLE_TO_PROCESS,
    QueryError,
    date_range_match,
    has_wildcard,
    is_universal,
    multi_value_match,
    parse_date,
    parse_int,
    parse_uid,
    single_value_match,
    time_range_match,
    time_single_match,
    uid_list_match,
    universal_match,
    wildcard_match,
)

__all__ = [
    "QueryError",
    "Query",
    "build_query",
    "iter_results",
    "iter_rows",
    "IDENTIFIER_DOES_NOT_MATCH",
    "UNABLE_TO_PROCESS",
]


@dataclass(frozen=True)
class Key:
    level: str  # the level it belongs to in the Patient Root model
    column: str  # column of that level's model
    vr: str
    upper: str = ""  # upper-cased copy, for case-insensitive person names
    on_study: bool = False  # the Study row holds a copy (read it from there below PATIENT level)
    multi: bool = False  # stored backslash-joined
    derived: bool = False  # computed per answer at its own level (DERIVED), not a column


KEYS = {
    # Patient level (PS3.4 C.6.1.1.2)
    "PatientName": Key(PATIENT, "patient_name", "PN", upper="patient_name_upper", on_study=True),  # (0010,0010)
    "PatientID": Key(PATIENT, "patient_id", "LO", on_study=True),  # (0010,0020) LO, unique key
    "IssuerOfPatientID": Key(PATIENT, "issuer_of_patient_id", "LO"),  # (0010,0021)
    "PatientBirthDate": Key(PATIENT, "patient_birth_date", "DA", on_study=True),  # (0010,0030)
    "PatientSex": Key(PATIENT, "patient_sex", "CS", on_study=True),  # (0010,0040)
    "NumberOfPatientRelatedStudies": Key(PATIENT, "num_studies", "IS"),  # (0020,1200)
    # Study level (C.6.1.1.3)
    "StudyInstanceUID": Key(STUDY, "study_instance_uid", "UI"),  # (0020,000D) UI, unique key
    "StudyDate": Key(STUDY, "study_date", "DA"),  # (0008,0020)
    "StudyTime": Key(STUDY, "study_time", "TM"),  # (0008,0030)
    "AccessionNumber": Key(STUDY, "accession_number", "SH"),  # (0008,0050)
    "StudyID": Key(STUDY, "study_id", "SH"),  # (0020,0010)
    "StudyDescription": Key(STUDY, "study_description", "LO"),  # (0008,1030)
    "ReferringPhysicianName": Key(
        STUDY, "referring_physician_name", "PN", upper="referring_physician_name_upper"
    ),  # (0008,0090)
    "ModalitiesInStudy": Key(STUDY, "modalities_in_study", "CS", multi=True),  # (0008,0061)
    "NumberOfStudyRelatedSeries": Key(STUDY, "num_series", "IS"),  # (0020,1206)
    "NumberOfStudyRelatedInstances": Key(STUDY, "num_instances", "IS"),  # (0020,1208)
    "SOPClassesInStudy": Key(STUDY, "sop_classes_in_study", "UI", multi=True, derived=True),  # (0008,0062)
    # Series level (C.6.1.1.4)
    "SeriesInstanceUID": Key(SERIES, "series_instance_uid", "UI"),  # (0020,000E) UI, unique key
    "Modality": Key(SERIES, "modality", "CS"),  # (0008,0060)
    "SeriesNumber": Key(SERIES, "series_number", "IS"),  # (0020,0011)
    "SeriesDescription": Key(SERIES, "series_description", "LO"),  # (0008,103E)
    "BodyPartExamined": Key(SERIES, "body_part_examined", "CS"),  # (0018,0015)
    "SeriesDate": Key(SERIES, "series_date", "DA"),  # (0008,0021)
    "SeriesTime": Key(SERIES, "series_time", "TM"),  # (0008,0031)
    "NumberOfSeriesRelatedInstances": Key(SERIES, "num_instances", "IS"),  # (0020,1209)
    "InstitutionName": Key(SERIES, "institution_name", "LO"),  # (0008,0080)
    "StationName": Key(SERIES, "station_name", "SH"),  # (0008,1010)
    # Composite object instance level (C.6.1.1.5)
    "SOPInstanceUID": Key(IMAGE, "sop_instance_uid", "UI"),  # (0008,0018) UI, unique key
    "SOPClassUID": Key(IMAGE, "sop_class_uid", "UI"),  # (0008,0016)
    "InstanceNumber": Key(IMAGE, "instance_number", "IS"),  # (0020,0013)
}

# Keys of PS3.4 C.6 that we do not store: returned empty, but still checked
# against the query level.
UNSTORED_KEYS = {
    PATIENT: {
        "PatientBirthTime", "OtherPatientIDsSequence", "OtherPatientNames", "EthnicGroup", "PatientComments",
        "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances", "IssuerOfPatientIDQualifiersSequence",
    },
    STUDY: {
        "OtherStudyNumbers", "NameOfPhysiciansReadingStudy", "AdmittingDiagnosesDescription", "PatientAge",
        "PatientSize", "PatientWeight", "Occupation", "AdditionalPatientHistory",
        "AnatomicRegionsInStudyCodeSequence", "ProcedureCodeSequence", "IssuerOfAccessionNumberSequence",
    },
    SERIES: {
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "RequestAttributesSequence",
        "Laterality", "ProtocolName", "OperatorsName", "PerformingPhysicianName", "Manufacturer",
    },
    IMAGE: {
        "ContentDate", "ContentTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionNumber", "ImageType",
        "Rows", "Columns", "NumberOfFrames", "ImageComments", "ConceptNameCodeSequence",
        "AlternateRepresentationSequence", "ContentLabel", "ContentDescription",
    },
}  # fmt: skip
_UNSTORED_LEVEL = {kw: level for level, kws in UNSTORED_KEYS.items() for kw in kws}

# Filled in by us for every response, never matched (C.4.1.1.3.2).
_RESPONSE_ONLY = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}


@dataclass(frozen=True)
class _Field:
    tag: int
    vr: str
    column: str = ""  # "" -> returned empty
    multi: bool = False


@dataclass
class Query:
    """A checked C-FIND: the queryset (rows as dicts, by pk) and what to return."""

    level: str
    queryset: object
    keywords: list = field(default_factory=list)  # requested keys, in the identifier's order
    fields: list = field(default_factory=list)
    wants_availability: bool = False


def build_query(
    identifier: Dataset, *, model: str, case_insensitive: bool, relational: bool = False, rows=None
) -> Query:
    """Check `identifier` and turn it into a Query; raises QueryError.

    1. the QueryRetrieveLevel must be one of the model's levels;
    2. the unique key of every level above it must hold a single value,
       unless the query is `relational` (PS3.4 C.4.1.2.2: those keys may be
       absent or match like any other key; QIDO-RS `/series`, `/instances`);
    3. each other key must belong to that level or one above; stored keys
       become conditions and returned columns, the rest are returned empty.
    `rows` (a queryset of the level's model) narrows the search to what a
    caller may see; None searches the whole index.  The identifier is only read.
    """
    if model not in MODELS:
        raise ValueError(f"unknown information model {model!r}")
    levels = MODELS[model]
    level = _query_level(identifier, levels)
    for upper in () if relational else levels_above(model, level):
        _check_unique_key(identifier, LEVELS[upper].unique_key)

    row_model, paths = LEVELS[level].model, LEVELS[level].paths
    condition, query, derived = Q(), Query(level=level, queryset=None), {}
    for tag in sorted(identifier.keys()):
        if tag & 0xFFFF == 0:  # group length
            continue
        elem = _element(identifier, tag)
        keyword = elem.keyword or str(elem.tag)
        query.keywords.append(keyword)
        if keyword in _RESPONSE_ONLY:
            query.wants_availability |= keyword == "InstanceAvailability"
            continue
        key = KEYS.get(keyword)
        key_level = key.level if key else _UNSTORED_LEVEL.get(keyword, level)
        if _rank(key_level, levels) > levels.index(level):
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"{keyword} is below the {level} level")
        if key is None or elem.VR == "SQ" or (key.derived and key.level != level):
            query.fields.append(_Field(int(elem.tag), elem.VR))
            continue
        if key.derived:
            derived[key.column] = DERIVED[key.column]()
            query.fields.append(_Field(int(elem.tag), key.vr, key.column, key.multi))
            condition &= DERIVED_MATCH[key.column]([parse_uid(v) for v in _texts(elem) if v and not is_universal(v)])
            continue
        path = paths[STUDY] if key.on_study and level != PATIENT else paths.get(key.level, "")
        query.fields.append(_Field(int(elem.tag), key.vr, path + key.column, key.multi))
        condition &= key_condition(key, path, _texts(elem), level=level, case_insensitive=case_insensitive)

    columns = list(dict.fromkeys(f.column for f in query.fields if f.column))
    rows = row_model.objects.all() if rows is None else rows
    query.queryset = rows.filter(condition).annotate(**derived).order_by("pk").values(*columns)
    return query


class _JoinedDistinct(Aggregate):
    """The distinct values of a text column, backslash-joined (a multi-valued
    DICOM value), in order on PostgreSQL.  SQLite's GROUP_CONCAT(DISTINCT …)
    takes no separator: it joins with commas, which no UID holds."""

    function = "STRING_AGG"
    template = "%(function)s(DISTINCT %(expressions)s, '\\' ORDER BY %(expressions)s)"
    output_field = CharField()

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(
            compiler, connection, template="REPLACE(GROUP_CONCAT(DISTINCT %(expressions)s), ',', '\\')", **extra
        )


def _sop_classes_in_study():
    """SOPClassesInStudy of each Study row: one correlated subquery, read
    only for the answers (after any limit), by the instance's series index."""
    instances = Instance.objects.filter(series__study=OuterRef("pk")).order_by().values("series__study")
    return Subquery(instances.annotate(joined=_JoinedDistinct("sop_class_uid")).values("joined"))


def _sop_classes_match(uids):
    """PS3.4 C.2.2.2.2 list of UID matching on a multi-valued key: a study
    matches when it holds an instance of any of the SOP classes.  One
    uncorrelated subquery (the studies of those instances, read once through
    the SOP class index): as a correlated EXISTS per study, SQLite read that
    index for every study, 24 s on the 100,000-instance index of
    bench/query.py against 28 ms this way."""
    if not uids:
        return universal_match()
    return Q(pk__in=Instance.objects.filter(sop_class_uid__in=uids).values("series__study"))


# Keys computed per answer (Key.derived), at STUDY level: column -> the annotation, the condition.
DERIVED = {"sop_classes_in_study": _sop_classes_in_study}
DERIVED_MATCH = {"sop_classes_in_study": _sop_classes_match}


def key_condition(key: Key, path: str, values, *, level: str, case_insensitive: bool) -> Q:
    """The condition one key puts on the rows: the PS3.4 C.2.2.2 rule its VR
    and value call for, any of several values (list of UIDs, or our
    any-value reading of other multi-valued keys)."""
    values = [v for v in values if v]
    if not values or any(is_universal(v) for v in values):
        return universal_match()
    column = path + key.column
    if key.vr == "UI":
        uids = [parse_uid(v) for v in values]
        return single_value_match(column, uids[0]) if len(uids) == 1 else uid_list_match(column, uids)
    if key.upper and case_insensitive:
        column, values = path + key.upper, [v.upper() for v in values]
    condition = Q()
    for value in values:
        condition |= _value_condition(key, column, value, level)
    return condition


def _value_condition(key, column, value, level):
    if key.vr == "DA":
        return date_range_match(column, value) if "-" in value else single_value_match(column, parse_date(value))
    if key.vr == "TM":
        return time_range_match(column, value) if "-" in value else time_single_match(column, value)
    if key.vr == "IS":
        return single_value_match(column, parse_int(value))
    if key.multi:
        return modality_wildcard_match(level, value) if has_wildcard(value) else multi_value_match(column, value)
    return wildcard_match(column, value) if has_wildcard(value) else single_value_match(column, value)


def modality_wildcard_match(level, pattern):
    """PS3.4 C.2.2.2.4 wild card matching on ModalitiesInStudy: a study
    matches when one of its series' modalities matches the pattern (on the
    joined column a `*` could run across the separator)."""
    study = {STUDY: "pk", SERIES: "study", IMAGE: "series__study"}[level]
    return Q(Exists(Series.objects.filter(study=OuterRef(study), modality__dicom_wildcard=pattern)))


def iter_results(query: Query, *, limit: int = 0, offset: int = 0, retrieve_ae_title: str, implicit_vr=None):
    """Yield one response identifier per matching row, reading rows lazily;
    skip the first `offset` rows, stop after `limit` results when it is above 0.

    With `implicit_vr` (True/False: the little-endian transfer syntax of the
    response), text values come pre-encoded as raw elements that pydicom
    writes as they are: encoding through pydicom's writers was half of the
    time of a C-FIND with many answers."""
    build = _response if implicit_vr is None else _raw_response
    for row in iter_rows(query, limit=limit, offset=offset):
        yield build(query, row, retrieve_ae_title, implicit_vr)


def iter_rows(query: Query, *, limit: int = 0, offset: int = 0):
    """The matching rows themselves (dicts by `query.fields`' columns), lazily,
    for a caller that encodes answers its own way (QIDO-RS writes DICOM JSON)."""
    return window(query.queryset, limit=limit, offset=offset).iterator(chunk_size=200)


def window(rows, *, limit: int = 0, offset: int = 0):
    """`rows` without the first `offset`, at most `limit` of them when it is above 0."""
    return rows[offset : offset + limit] if limit > 0 else rows[offset:]


def _response(query, row, retrieve_ae_title, implicit_vr=None):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = query.level
    ds.RetrieveAETitle = retrieve_ae_title
    if query.wants_availability:
        ds.InstanceAvailability = "ONLINE"
    for f in query.fields:
        value = row[f.column] if f.column else None
        if f.multi and value:
            value = value.split("\\")
        elif value is None or value == "":
            value = empty_value_for_VR(f.vr)
        ds.add(DataElement(f.tag, f.vr, value))
    return ds


_UTF8 = convert_encodings(["ISO_IR 192"])


def _raw_response(query, row, retrieve_ae_title, implicit_vr):
    """_response() as raw little-endian elements in UTF-8 (ISO_IR 192)."""
    ds = Dataset()
    ds.set_original_encoding(implicit_vr, True, _UTF8)
    values = [
        (0x00080005, "CS", "ISO_IR 192"),
        (0x00080052, "CS", query.level),
        (0x00080054, "AE", retrieve_ae_title),
    ]
    if query.wants_availability:
        values.append((0x00080056, "CS", "ONLINE"))
    for f in query.fields:
        value = row[f.column] if f.column else None
        if f.vr not in PADDING:  # text VRs; values of other VRs go through pydicom
            ds.add(DataElement(f.tag, f.vr, empty_value_for_VR(f.vr) if value in (None, "") else value))
            continue
        values.append((f.tag, f.vr, "" if value is None else str(value)))
    for tag, vr, text in values:
        raw = text.encode("utf-8")
        if len(raw) % 2:
            raw += PADDING[vr]
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, implicit_vr, True, True, False)
    return ds


# --- Reading the identifier -------------------------------------------------------


def _query_level(identifier, levels):
    if "QueryRetrieveLevel" not in identifier:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, "missing QueryRetrieveLevel")
    values = _texts(_element(identifier, 0x00080052))
    if len(values) != 1 or values[0] not in levels:
        shown = "\\".join(values)[:20]
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"unknown QueryRetrieveLevel {shown!r}")
    return values[0]


def _check_unique_key(identifier, keyword):
    """PS3.4 C.4.1.2.1: the unique key of every level above the query level
    holds one value; empty, universal, wildcard and list values are refused."""
    if keyword not in identifier:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"missing unique key {keyword}")
    values = _texts(_element(identifier, keyword))
    if len(values) != 1 or not values[0] or has_wildcard(values[0]):
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH, f"{keyword} must be one value")


def _rank(level, levels):
    """Index of a Patient Root level in `levels`; patient keys belong to the
    STUDY level of the Study Root model."""
    return levels.index(level) if level in levels else 0


def _element(identifier, tag):
    try:
        with warnings.catch_warnings():
            # pydicom warns about values it keeps as text (`1*` for an IS);
            # the rules below judge them and answer with a status instead.
            warnings.simplefilter("ignore")
            return identifier[tag]
    except (ValueError, TypeError, LookupError) as exc:  # a value pydicom cannot convert
        name = keyword_for_tag(tag) if isinstance(tag, int) else tag
        raise QueryError(UNABLE_TO_PROCESS, f"unreadable value of {name or tag}") from exc


def _texts(elem):
    """The values of an element as stripped strings ([] when empty)."""
    value = elem.value
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        return [str(v).strip() for v in items]
    except (ValueError, TypeError) as exc:
        raise QueryError(UNABLE_TO_PROCESS, f"unreadable value of {elem.keyword or elem.tag}") from exc
