"""Media types of WADO: reading Accept headers (PS3.18 8.7.3 and 8.7.4),
and multipart/related answers streamed part by part (8.7.3.5 / RFC 2387).

Real clients send Accept headers in many shapes: several media ranges with
q values, `type` quoted or not, `multipart/related` without a `type`,
`*/*`.  `parse_accept` reads them all into `Wanted` ranges, best first."""

import re
import uuid
from dataclasses import dataclass

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

# (media type of a frame or bulk data part, per stored transfer syntax of
# encapsulated pixel data: PS3.18 Table 8.7.3-3 / 8.7.3-4)
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, first-order prediction
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Lossless Only
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
}
# Synonyms clients send for the media types above.
_ALIASES = {"image/x-dicom-rle": "image/dicom-rle", "image/x-jls": "image/jls"}
# Stored syntaxes whose Pixel Data is read at an offset and sent as it is.
NATIVE = {str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)}
UNCOMPRESSED = NATIVE | {str(DeflatedExplicitVRLittleEndian), "1.2.840.10008.1.2.2"}


@dataclass(frozen=True)
class Wanted:
    """One media range of an Accept header.  For `multipart/related` it is
    the part's `type`; `transfer_syntax` is a UID, "*" or None (not said)."""

    media_type: str
    multipart: bool = False
    transfer_syntax: str | None = None
    q: float = 1.0

    def matches(self, media_type):
        """Does this range admit `media_type` (wildcards included)?"""
        if self.media_type in ("*/*", "*", ""):
            return True
        kind, _, sub = self.media_type.partition("/")
        return self.media_type == media_type or (sub == "*" and media_type.startswith(kind + "/"))

    def allows_syntax(self, uid):
        return self.transfer_syntax in (None, "*", uid)


_RANGE = re.compile(r'(?:[^,"]|"[^"]*")+')
_PARAMETER = re.compile(r';\s*([^=;\s]+)\s*=\s*("[^"]*"|[^;]*)')


def parse_accept(header, *, default):
    """The media ranges of an Accept header, best first (q=0 left out); an
    absent or empty header means `default` (a Wanted)."""
    wanted = []
    for position, text in enumerate(_RANGE.findall(header or "")):
        media_type = text.split(";", 1)[0].strip().lower()
        if not media_type:
            continue
        parameters = {k.lower(): v.strip().strip('"').strip() for k, v in _PARAMETER.findall(text)}
        try:
            q = float(parameters.get("q", 1))
        except ValueError:
            q = 1.0
        if q <= 0:
            continue
        syntax = parameters.get("transfer-syntax") or None
        if media_type == "multipart/related":
            part = parameters.get("type", "*/*").lower()
            wanted.append((-q, position, Wanted(_ALIASES.get(part, part), True, syntax, q)))
        else:
            wanted.append((-q, position, Wanted(_ALIASES.get(media_type, media_type), False, syntax, q)))
    if not wanted:
        return [default]
    return [w for _, _, w in sorted(wanted, key=lambda item: item[:2])]


def with_syntax(media_type, uid):
    return f"{media_type}; transfer-syntax={uid}" if uid else media_type


class Multipart:
    """A multipart/related body written part by part: `part()` gives the
    bytes that open a part, `end()` the closing delimiter."""

    def __init__(self, part_type):
        self.boundary = uuid.uuid4().hex
        self.part_type = part_type

    def content_type(self):
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def part(self, content_type, *, first=False, location=None):
        head = b"" if first else b"\r\n"
        head += f"--{self.boundary}\r\nContent-Type: {content_type}\r\n".encode()
        if location:
            head += f"Content-Location: {location}\r\n".encode()
        return head + b"\r\n"

    def end(self, *, empty=False):
        return f"{'' if empty else chr(13) + chr(10)}--{self.boundary}--\r\n".encode()
