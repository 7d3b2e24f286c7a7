"""C-FIND attribute matching (PS3.4 C.2.2.2): one function per rule.

Each rule turns a column path and the text of one key value into a Django
`Q`; `dicomnodes.query.matching` picks the rule from the key's VR and the value's
form.  Values are Unicode strings (the caller decoded the identifier); the
index keeps dates as YYYYMMDD and times padded to HHMMSS[.ffffff], so both
compare correctly as text.

Wildcards go through the `dicom_wildcard` lookup registered below: SQLite's
LIKE ignores ASCII case, so SQLite gets GLOB (case-sensitive) and
PostgreSQL gets LIKE with every `%`, `_` and `\\` of the value escaped.
"""

import re

from django.db.models import CharField, Lookup, Q

from dicomnodes.archive.header import normalise_date, normalise_time
from dicomnodes.dimse import Status

# The C-FIND failures of PS3.4 C.4.1.1.4 a QueryError carries.
IDENTIFIER_DOES_NOT_MATCH = Status.IDENTIFIER_DOES_NOT_MATCH
UNABLE_TO_PROCESS = Status.UNABLE_TO_PROCESS


class QueryError(ValueError):
    """A C-FIND identifier we refuse; `status` is the DIMSE status to answer
    with and the message (at most 64 characters) its Error Comment."""

    def __init__(self, status, message):
        super().__init__(message[:64])
        self.status = status
        self.message = message[:64]


# --- The wildcard lookup ----------------------------------------------------------


def glob_pattern(value):
    """A DICOM `*`/`?` pattern as an SQLite GLOB pattern.  The literal parts
    never hold `*` or `?` (DICOM has no escape for them); `[` starts a GLOB
    character class and is escaped as `[[]`."""
    return "".join("[[]" if c == "[" else c for c in value)


def like_pattern(value):
    """A DICOM `*`/`?` pattern as a LIKE pattern with `\\` as the escape
    character: a literal `%`, `_` or `\\` in the value matches only itself."""
    out = []
    for c in value:
        if c in "%_\\":
            out.append("\\" + c)
        elif c == "*":
            out.append("%")
        elif c == "?":
            out.append("_")
        else:
            out.append(c)
    return "".join(out)


@CharField.register_lookup
class DicomWildcard(Lookup):
    """`column__dicom_wildcard="DOE*"`: case-sensitive `*`/`?` matching."""

    lookup_name = "dicom_wildcard"
    prepare_rhs = False

    def _lhs(self, compiler, connection):
        if not isinstance(self.rhs, str):
            raise TypeError("dicom_wildcard takes a plain string pattern")
        return self.process_lhs(compiler, connection)

    def as_sql(self, compiler, connection):
        lhs, params = self._lhs(compiler, connection)
        return f"{lhs} LIKE %s ESCAPE '\\'", [*params, like_pattern(self.rhs)]

    def as_postgresql(self, compiler, connection):
        # LIKE is case-sensitive on PostgreSQL; the ESCAPE clause is the
        # default there but stated so that the escaping above is explicit.
        return self.as_sql(compiler, connection)

    def as_sqlite(self, compiler, connection):
        lhs, params = self._lhs(compiler, connection)
        return f"{lhs} GLOB %s", [*params, glob_pattern(self.rhs)]


# --- The rules --------------------------------------------------------------------


def is_universal(value):
    """PS3.4 C.2.2.2.3 universal matching: a zero-length value (and, per
    C.2.2.2.4, a value of only `*`) matches every entity."""
    return value.strip("*") == "" if value else True


def has_wildcard(value):
    return "*" in value or "?" in value


def universal_match():
    """PS3.4 C.2.2.2.3: no restriction; the attribute is still returned."""
    return Q()


def single_value_match(column, value):
    """PS3.4 C.2.2.2.1 single value matching: the stored value equals the key."""
    return Q(**{column: value})


def uid_list_match(column, uids):
    """PS3.4 C.2.2.2.2 list of UID matching: any of the backslash-separated UIDs."""
    return Q(**{f"{column}__in": list(uids)})


def wildcard_match(column, pattern):
    """PS3.4 C.2.2.2.4 wild card matching: `*` any sequence (also none), `?`
    exactly one character; everything else matches only itself."""
    return Q(**{f"{column}__dicom_wildcard": pattern})


def date_range_match(column, value):
    """PS3.4 C.2.2.2.5 range matching of a DA key: `A-B`, `A-` or `-B`,
    bounds inclusive; a stored empty date never matches a range."""
    lower, upper = _split_range(value)
    q = ~Q(**{column: ""})
    if lower:
        q &= Q(**{f"{column}__gte": parse_date(lower)})
    if upper:
        q &= Q(**{f"{column}__lte": parse_date(upper)})
    return q


def time_range_match(column, value):
    """PS3.4 C.2.2.2.5 range matching of a TM key, bounds inclusive.

    The bounds are padded the way stored times are: a lower bound with zeros
    (`1015` -> `101500`) and an upper bound to the end of the period it names
    (`1015` -> `101559.999999`), so that `-1015` includes 10:15:30.
    """
    lower, upper = _split_range(value)
    q = ~Q(**{column: ""})
    if lower:
        q &= Q(**{f"{column}__gte": _time(lower)})
    if upper:
        q &= Q(**{f"{column}__lte": time_upper_bound(upper)})
    return q


def time_single_match(column, value):
    """A single TM value (C.2.2.2.1) matches every stored time within the
    precision it is given in: `1015` matches 10:15:00 to 10:15:59.999999."""
    return time_range_match(column, f"{value}-{value}")


def multi_value_match(column, value):
    """ModalitiesInStudy (0008,0061) is stored backslash-joined: a study
    matches when ANY of its values equals `value` (PS3.4 C.6.1.1.4 note on
    multi-valued attributes).  `value` holds no wildcard."""
    return (
        Q(**{column: value})
        | Q(**{f"{column}__startswith": value + "\\"})
        | Q(**{f"{column}__endswith": "\\" + value})
        | Q(**{f"{column}__contains": "\\" + value + "\\"})
    )


# --- Value checks -----------------------------------------------------------------

_INT_RE = re.compile(r"^[+-]?\d{1,10}$")


def _split_range(value):
    lower, sep, upper = value.partition("-")
    if not sep or "-" in upper or not (lower.strip() or upper.strip()):
        raise QueryError(UNABLE_TO_PROCESS, f"malformed range {value[:40]!r}")
    return lower.strip(), upper.strip()


def parse_date(text):
    date = normalise_date(text)
    if not date:
        raise QueryError(UNABLE_TO_PROCESS, f"malformed date {text[:40]!r}")
    return date


def _time(text):
    time = normalise_time(text)
    if not time:
        raise QueryError(UNABLE_TO_PROCESS, f"malformed time {text[:40]!r}")
    return time


def time_upper_bound(text):
    """The last moment of the period a (partial) TM value names."""
    time = _time(text)
    hhmmss, _, frac = time.partition(".")
    digits = len(text.strip().replace(":", "").partition(".")[0])
    hhmmss = hhmmss[:digits] + "5959"[: 6 - digits]
    return f"{hhmmss}.{frac.ljust(6, '9')}"


def parse_int(text):
    if not _INT_RE.match(text):
        raise QueryError(UNABLE_TO_PROCESS, f"not an integer: {text[:40]!r}")
    return int(text)


def parse_uid(text):
    if has_wildcard(text):
        raise QueryError(UNABLE_TO_PROCESS, "wildcards are not allowed in UIDs")
    return text
