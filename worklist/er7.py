"""HL7 v2 text (ER7) by position: MSH header, segments, escapes, charsets, dates.

hl7apy decides whether a message is well-formed (see hl7in.py), but its
element tree renumbers fields that lie past its version's definition (OBR-44
of a 2.3 message, or any field of a Z segment, may move), so values are read
here by position from the same text.
"""

import datetime
import re
from dataclasses import dataclass

from dicomnodes.archive.header import normalise_time
from worklist.models import DICOM_CHARSETS, HL7_CHARSETS

HL7_NULL = '""'  # "delete the stored value" in HL7 v2 (2.5 section 2.5.3)


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def msh2(self) -> str:
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"

    def as_hl7apy(self) -> dict:
        return {
            "FIELD": self.field,
            "COMPONENT": self.component,
            "REPETITION": self.repetition,
            "ESCAPE": self.escape,
            "SUBCOMPONENT": self.subcomponent,
            "GROUP": "\r",
            "SEGMENT": "\r",
        }


class Segment:
    """One segment; `get(n, component, subcomponent, rep)` returns unescaped text.

    Field numbers are HL7's: for MSH, MSH-1 is the field separator itself and
    MSH-2 the encoding characters, so `get(10)` is MSH-10 in every segment.
    """

    def __init__(self, text: str, enc: Encoding):
        self.text = text
        self.enc = enc
        self.name = text[:3]
        parts = text.split(enc.field)
        self._fields = ["MSH", enc.field, *parts[1:]] if self.name == "MSH" else parts

    def raw(self, n: int) -> str:
        """Field n as sent (escaped, with its repetitions)."""
        return self._fields[n] if 0 < n < len(self._fields) else ""

    def is_null(self, n: int) -> bool:
        return self.raw(n) == HL7_NULL

    def repetitions(self, n: int) -> list[str]:
        raw = self.raw(n)
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        return raw.split(self.enc.repetition) if raw else []

    def get(self, n: int, component: int = 1, subcomponent: int = 1, rep: int = 0) -> str:
        reps = self.repetitions(n)
        if rep >= len(reps):
            return ""
        if self.name == "MSH" and n in (1, 2):
            return reps[0]
        parts = reps[rep].split(self.enc.component)
        if component > len(parts):
            return ""
        subs = parts[component - 1].split(self.enc.subcomponent)
        if subcomponent > len(subs):
            return ""
        value = subs[subcomponent - 1]
        return "" if value == HL7_NULL else clean(unescape(value, self.enc))

    def first_rep(self, n: int, component: int = 1) -> int:
        """Index of the first repetition of field n whose component is not empty (0 if none)."""
        for i in range(len(self.repetitions(n))):
            if self.get(n, component, rep=i):
                return i
        return 0

    def __repr__(self):
        return f"<Segment {self.name}>"


_ESCAPE_NAMES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def unescape(text: str, enc: Encoding) -> str:
    r"""Undo \F\ \S\ \T\ \R\ \E\; .br becomes a space; highlighting and
    character-set switches (\H\ \N\ \C..\ \M..\ \X..\) are dropped."""
    if enc.escape not in text:
        return text
    esc = re.escape(enc.escape)

    def one(m):
        name = m.group(1)
        if name in _ESCAPE_NAMES:
            return getattr(enc, _ESCAPE_NAMES[name])
        if name == ".br":
            return " "
        return ""

    return re.sub(f"{esc}([^{esc}]*){esc}", one, text)


def escape(text: str, enc: Encoding, *, keep_components: bool = False) -> str:
    """Text as an ER7 value; with keep_components, ^ still separates components."""
    out = text.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    pairs = [("field", "F"), ("repetition", "R"), ("subcomponent", "T")]
    if not keep_components:
        pairs.append(("component", "S"))
    for attr, name in pairs:
        out = out.replace(getattr(enc, attr), f"{enc.escape}{name}{enc.escape}")
    return out.replace("\r", " ").replace("\n", " ")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean(text: str) -> str:
    """No control characters (PostgreSQL refuses NUL; DICOM text has no place for them)."""
    return _CONTROL.sub(" ", text).strip()


def split_segments(text: str, enc: Encoding) -> list[Segment]:
    """Segments separated by \\r, \\n or \\r\\n; empty lines are skipped."""
    return [Segment(line.strip("\n"), enc) for line in re.split(r"\r\n|\r|\n", text) if line.strip()]


# --- MSH ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Header:
    """What the ACK and the log need from MSH, as sent (ER7 text)."""

    enc: Encoding
    sending_application: str = ""  # MSH-3
    sending_facility: str = ""  # MSH-4
    message_code: str = ""  # MSH-9.1, e.g. ORM
    trigger_event: str = ""  # MSH-9.2, e.g. O01
    control_id: str = ""  # MSH-10
    processing_id: str = ""  # MSH-11
    version: str = ""  # MSH-12.1
    charset: str = ""  # MSH-18, first repetition

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code


def read_header(first_line: str) -> Header | None:
    """The MSH of a message from its first segment, or None if it is not one.

    Used twice: on the raw bytes decoded as Latin-1 (to find MSH-18 before
    the message can be decoded) and on the decoded text.
    """
    line = first_line.lstrip("\ufeff \t\r\n\x00")
    if not line.startswith("MSH") or len(line) < 8:
        return None
    sep = line[3]
    if sep.isalnum() or sep.isspace():
        return None
    chars = line[4:].split(sep, 1)[0][:4]
    # Odd encoding characters still give a header for the rejection's ACK;
    # hl7apy refuses the message itself.
    enc = Encoding(sep, *chars) if len(set(chars + sep)) == 5 else Encoding(field=sep)
    msh = Segment(re.split(r"[\r\n]", line, maxsplit=1)[0], enc)
    return Header(
        enc=enc,
        sending_application=clean(msh.raw(3)),
        sending_facility=clean(msh.raw(4)),
        message_code=msh.get(9, 1).upper(),
        trigger_event=msh.get(9, 2).upper(),
        control_id=msh.get(10),
        processing_id=msh.get(11, 1),
        version=msh.get(12, 1),
        charset=msh.get(18, 1, rep=0),
    )


# --- Character sets -------------------------------------------------------------------------


def _key(name: str) -> str:
    return re.sub(r"[\s_\-/.]", "", name.upper())


_BY_KEY = {_key(name): name for name in HL7_CHARSETS}
_BY_KEY.update(
    {
        "USASCII": "ASCII",
        "ISOIR6": "ASCII",
        "UTF8": "UNICODE UTF-8",
        "ISOIR192": "UNICODE UTF-8",
        "LATIN1": "8859/1",
        "LATIN9": "8859/15",
    }
)
_BY_KEY.update({_key(term): name for name, term in DICOM_CHARSETS.items() if term})


def resolve_charset(value: str) -> str | None:
    """The HL7 table 0211 name (a key of HL7_CHARSETS) for what a sender wrote
    in MSH-18, accepting common spellings ("UTF-8", "ISO-8859-7", "ISO IR100",
    "windows-1252"); None if unknown."""
    key = _key(value)
    if key in _BY_KEY:
        return _BY_KEY[key]
    if m := re.fullmatch(r"ISO8859(\d{1,2})", key):
        name = f"8859/{m.group(1)}"
        return name if name in HL7_CHARSETS else None
    if m := re.fullmatch(r"(?:WINDOWS|WIN)(125\d)", key):
        return f"CP{m.group(1)}"
    return None


def dicom_charset(name: str) -> str:
    """The DICOM Specific Character Set for an HL7 charset name; ISO_IR 192
    (UTF-8) for the Windows code pages, which DICOM does not define."""
    return DICOM_CHARSETS.get(name, "ISO_IR 192")


def codec_for_dicom(term: str) -> str:
    for name, dicom in DICOM_CHARSETS.items():
        if dicom == term:
            return HL7_CHARSETS[name]
    return "utf_8"


# --- Dates ----------------------------------------------------------------------------------

_DTM_RE = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,4})?([+-]\d{4})?")


def parse_dtm(text: str) -> tuple[str, str]:
    """(DA, TM) from an HL7 DT/TS/DTM value; a part not given is "".

    Raises ValueError for anything that is not a real date and time. The time
    zone offset is dropped: worklists are local.
    """
    m = _DTM_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])")
    year, month, day, hour, minute, second, frac, _ = m.groups()
    if day is None or month is None:
        return "", ""
    if hour is None and minute is not None:
        raise ValueError(f"{text!r} is not an HL7 date/time")
    try:
        datetime.date(int(year), int(month), int(day))
        datetime.time(int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid date/time ({exc})") from None
    date = f"{year}{month}{day}"
    if hour is None:
        return date, ""
    return date, normalise_time(f"{hour}{minute or '00'}{second or '00'}{frac or ''}")
