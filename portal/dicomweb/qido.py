"""QIDO-RS (PS3.18 10.6): search for studies, series and instances.

One matching engine with C-FIND: the query parameters become a Study Root
C-FIND identifier, and `dicomnodes.query.matching` matches it over the rows
the request's scope may see (`build_query(rows=…)`), with the PS3.4 C.2.2.2
rules C-FIND uses (single value, wildcards, ranges, UID lists, universal).

1. `Accept` (or the `accept` parameter): application/dicom+json,
   application/json or a wildcard; anything else 406.
2. The parameters (`SearchParameters.parse`): `{attributeID}={value}` by
   keyword or tag, `includefield` (repeatable, comma lists, `all`),
   `fuzzymatching`, `limit`, `offset`; a mistake is a 400 naming it.
3. The identifier: the level's default attributes (PS3.18 Table 10.6.3-3,
   -4, -5, less those the index does not hold), the unique keys above the
   level (for RetrieveURL), the filters, the included fields; the UIDs of
   the path.  `/series`, `/instances` and `/studies/{study}/instances` are
   relational queries (PS3.4 C.4.1.2.2).
4. The answers: DICOM JSON (PS3.18 F.2) written from the matched rows
   (`matching.iter_rows`, `dicomjson.py`) with a RetrieveURL under the root
   the request came through; 200, or 204 No Content when nothing matches;
   a `Warning` when more matches wait.
"""

import json
import re
from dataclasses import dataclass, field

from django.http import HttpResponse
from django.urls import reverse
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from dicomnodes.models import DicomServerSettings
from dicomnodes.query.levels import IMAGE, PATIENT, SERIES, STUDY
from dicomnodes.query.matching import KEYS, UNSTORED_KEYS, QueryError, build_query, iter_rows
from portal.dicomweb.access import dicomweb_view, error
from portal.dicomweb.dicomjson import ResultWriter

DICOM_JSON = "application/dicom+json"
MEDIA_TYPES = (DICOM_JSON, "application/json")
# Without a C-FIND result limit in the settings, one answer holds at most
# this many results; a client pages through the rest with `offset`.
DEFAULT_MAX_RESULTS = 1000

# PS3.18 Table 10.6.3-3/-4/-5: the attributes every result carries.  Not
# held by the index, so left out: TimezoneOffsetFromUTC; at series level
# PerformedProcedureStepStartDate/Time and RequestAttributesSequence; at
# instance level Rows, Columns, BitsAllocated, NumberOfFrames.
# StudyDescription is ours (viewers list it).  RetrieveURL is added per result.
DEFAULTS = {
    STUDY: (
        "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
        "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
        "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SERIES: (
        "StudyInstanceUID", "Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    ),
    IMAGE: (
        "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
        "InstanceNumber",
    ),
}  # fmt: skip
ORDER = (STUDY, SERIES, IMAGE)  # the Study Root levels, top down
# Study Root level of each attribute the matching tables know (patient keys are study keys there).
_LEVEL_OF = {kw: STUDY if key.level == PATIENT else key.level for kw, key in KEYS.items()}
_LEVEL_OF.update({kw: STUDY if level == PATIENT else level for level, kws in UNSTORED_KEYS.items() for kw in kws})
_RESERVED = {"limit", "offset", "fuzzymatching", "includefield", "accept", "charset"}
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
# VRs whose values never hold a comma: `A,B` there is a list (PS3.18 8.3.4.1, UID lists).
_COMMA_LISTS = {"UI", "CS"}
RETRIEVE_URL = 0x00081190  # (0008,1190) UR


class BadRequest(ValueError):
    """A query we answer with 400; the message says what to fix."""


@dataclass(frozen=True)
class Attribute:
    tag: int
    keyword: str
    vr: str

    @classmethod
    def named(cls, name):
        """An attribute by keyword (`PatientName`) or tag (`00100010`)."""
        if "." in name:
            raise BadRequest(f"{name}: matching on sequence items is not supported")
        tag = int(name, 16) if _TAG.fullmatch(name) else tag_for_keyword(name)
        try:
            vr = dictionary_VR(tag) if tag is not None else None
        except KeyError:
            vr = None
        if vr is None or (tag >> 16) & 1 or not tag & 0xFFFF:  # unknown, private, or a group length
            raise BadRequest(f"{name} is not a DICOM attribute this server knows (a keyword or 8 hex digits)")
        return cls(tag, keyword_for_tag(tag), vr.split(" or ")[0])

    def level(self):
        """Its Study Root level, or None (an attribute the index does not know)."""
        return _LEVEL_OF.get(self.keyword)


@dataclass
class SearchParameters:
    filters: dict = field(default_factory=dict)  # Attribute -> [values]
    included: list = field(default_factory=list)  # Attributes
    include_all: bool = False
    fuzzy: bool = False
    limit: int = 0  # 0: as many as the server gives
    offset: int = 0

    @classmethod
    def parse(cls, query):
        """The parameters of a QueryDict; raises BadRequest."""
        found = cls()
        for name, values in query.lists():
            if name in _RESERVED:
                found._reserved(name, values)
                continue
            attribute = Attribute.named(name)
            texts = []
            for value in values:
                texts += value.split(",") if attribute.vr in _COMMA_LISTS else [value]
            found.filters.setdefault(attribute, []).extend(t.strip() for t in texts if t.strip())
        return found

    def _reserved(self, name, values):
        if name == "includefield":
            for item in (i.strip() for value in values for i in value.split(",")):
                if item == "all":
                    self.include_all = True
                elif item:
                    self.included.append(Attribute.named(item))
        elif name in ("limit", "offset"):
            setattr(self, name, _count(name, values[-1]))
        elif name == "fuzzymatching":
            if values[-1] not in ("true", "false"):
                raise BadRequest("fuzzymatching is true or false")
            self.fuzzy = values[-1] == "true"
        # `accept` and `charset` are read by negotiate()


def _count(name, text):
    if not text.isdigit():
        raise BadRequest(f"{name} is a number of results (0 or more)")
    return int(text)


# --- Content negotiation -------------------------------------------------------------


def negotiate(request):
    """The media type to answer with (PS3.18 8.7.5: DICOM JSON), or None
    when the client accepts neither it nor application/json.  The `accept`
    parameter (8.3.3.1) overrides the header."""
    header = request.GET.get("accept") or request.headers.get("Accept") or "*/*"
    ranges = []
    for position, text in enumerate(header.split(",")):
        media_type, *parameters = (part.strip() for part in text.split(";"))
        q = 1.0
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            ranges.append((-q, position, media_type.lower()))
    for _, _, media_type in sorted(ranges):
        if media_type in MEDIA_TYPES:
            return media_type
        if media_type in ("*/*", "application/*", "*"):
            return DICOM_JSON
    return None


def _accepts_utf8(request):
    """The `charset` parameter (PS3.18 8.3.3.2): we answer in UTF-8 only."""
    wanted = request.GET.get("charset")
    return not wanted or any(c.strip().lower() in ("utf-8", "utf8", "*") for c in wanted.split(","))


# --- The views --------------------------------------------------------------------------


@dicomweb_view
def search_studies(request, scope):
    return search(request, scope, STUDY)


@dicomweb_view
def search_series(request, scope, study=None):
    return search(request, scope, SERIES, study=study)


@dicomweb_view
def search_instances(request, scope, study=None, series=None):
    return search(request, scope, IMAGE, study=study, series=series)


def search(request, scope, level, *, study=None, series=None):
    """One QIDO-RS search at `level` within `scope`; `study`/`series` are the UIDs of the path."""
    media_type = negotiate(request)
    if media_type is None or not _accepts_utf8(request):
        return error(406, f"QIDO-RS answers {' or '.join(MEDIA_TYPES)} in UTF-8")
    settings = DicomServerSettings.load()
    most = settings.find_result_limit or DEFAULT_MAX_RESULTS
    try:
        parameters = SearchParameters.parse(request.GET)
        path = {k: v for k, v in (("StudyInstanceUID", study), ("SeriesInstanceUID", series)) if v}
        identifier, unmatched = search_identifier(level, parameters, path)
        query = build_query(
            identifier,
            model="STUDY",
            case_insensitive=parameters.fuzzy or settings.case_insensitive_names,
            # PS3.4 C.4.1.2.2: /series, /instances, /studies/{study}/instances
            relational=level != STUDY and (study is None or (level == IMAGE and series is None)),
            rows={STUDY: scope.studies, SERIES: scope.series, IMAGE: scope.instances}[level](),
        )
        limit = min(parameters.limit or most, most)
        # One more than asked tells whether more results wait.
        found = list(iter_rows(query, limit=limit + 1, offset=parameters.offset))
    except (BadRequest, QueryError) as exc:
        return error(400, str(exc))

    results = json_results(query, found[:limit], retrieve_root=_retrieve_root(request))
    if results:
        body = json.dumps(results, ensure_ascii=False, separators=(",", ":")).encode()
        response = HttpResponse(body, content_type=media_type)
    else:
        response = HttpResponse(status=204)
    warnings = _warnings(parameters, unmatched, more=len(found) > limit, next_offset=parameters.offset + limit)
    if warnings:
        response["Warning"] = ", ".join(f'299 - "{w}"' for w in warnings)
    return response


def _warnings(parameters, unmatched, *, more, next_offset):
    """What the Warning header says (PS3.18 8.3.4.1, 8.3.4.2, 8.3.4.4)."""
    warnings = []
    if more:
        warnings.append(f"There are additional results that can be requested (offset={next_offset})")
    if unmatched:
        names = ", ".join(a.keyword for a in unmatched)
        warnings.append(f"The following attributes are not supported for matching: {names}")
    if parameters.fuzzy:
        warnings.append("Fuzzy matching is applied as case-insensitive person name matching")
    return warnings


def search_identifier(level, parameters, path):
    """(the C-FIND identifier, the filter attributes the index cannot match).

    The defaults of the level and of each level above whose UID the path
    does not give (PS3.18 10.6.3.3: `/series` returns study attributes too);
    filters on attributes the index does not hold are returned empty and
    reported (8.3.4.1 lets a server skip them with a warning); included
    fields below the level are left out (OHIF asks studies for Modality)."""
    rank = ORDER.index(level)
    given = {STUDY: "StudyInstanceUID" in path, SERIES: "SeriesInstanceUID" in path}
    keywords = [k for upper in ORDER[: rank + 1] if upper == level or not given[upper] for k in DEFAULTS[upper]]
    if parameters.include_all:
        keywords += [k for k in KEYS if ORDER.index(_LEVEL_OF[k]) <= rank]
    wanted = [Attribute.named(k) for k in keywords]
    wanted += [a for a in parameters.included if a.level() is None or ORDER.index(a.level()) <= rank]

    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = level
    for attribute in wanted:
        if attribute.tag != RETRIEVE_URL:
            identifier.add(DataElement(attribute.tag, attribute.vr, None))
    unmatched = []
    for attribute, values in parameters.filters.items():
        if attribute.keyword in path:
            raise BadRequest(f"{attribute.keyword} is given by the path; leave it out of the query")
        if values and attribute.vr == "SQ":
            raise BadRequest(f"{attribute.keyword}: matching on sequence items is not supported")
        if values and attribute.keyword not in KEYS and attribute.keyword != "InstanceAvailability":
            unmatched.append(attribute)
        _set(identifier, attribute, "\\".join(values))
    for keyword, uid in path.items():
        _set(identifier, Attribute.named(keyword), uid)
    return identifier, unmatched


def _set(identifier, attribute, text):
    """A raw UTF-8 element: pydicom converts it when matching reads it, and
    matching turns a value it cannot convert into a QueryError (400)."""
    raw = text.encode("utf-8")
    if len(raw) % 2:
        raw += b"\x00" if attribute.vr == "UI" else b" "
    identifier[attribute.tag] = RawDataElement(attribute.tag, attribute.vr, len(raw), raw, 0, False, True)


def _retrieve_root(request):
    """The absolute URL of `studies` under the root this request came through."""
    match = request.resolver_match
    kwargs = {"token": match.kwargs["token"]} if "token" in match.kwargs else {}
    return request.build_absolute_uri(reverse(f"{match.namespace}:studies", kwargs=kwargs))


def json_results(query, rows, *, retrieve_root):
    """The rows as DICOM JSON, each with its RetrieveURL (WADO-RS under the same root)."""
    columns = {f.tag: f.column for f in query.fields}
    # the unique keys from the study down to the result's level (always in the identifier)
    uids = [columns[tag] for tag in (0x0020000D, 0x0020000E, 0x00080018)[: ORDER.index(query.level) + 1]]
    parts = ("", "/series/", "/instances/")
    writer = ResultWriter(query)
    return [
        writer.write(row, retrieve_root + "/" + "".join(p + row[c] for p, c in zip(parts, uids, strict=False)))
        for row in rows
    ]
