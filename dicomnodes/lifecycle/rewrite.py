"""Rewrite one stored file with new values for a few attributes, keeping
everything else (used by corrections and merge, lifecycle/corrections.py).

1. the preamble and the file meta group are copied as they are (same
   transfer syntax, same SOP Instance UID: nothing in them must change);
2. the dataset up to the first element of group 7FE0 (the pixel data) is
   read with pydicom, given the new values and encoded again in the file's
   transfer syntax;
3. the rest of the dataset (pixel data, native or encapsulated, and
   whatever follows it) is copied byte for byte by the kernel: it is never
   decoded and never held in memory;
4. the new file replaces the old one atomically (storage.write_atomically:
   a temporary in the same folder, fsync if asked, os.replace).

Character sets: a new value outside ASCII is written in UTF-8.  If the file
declared another character set, every text value of the part read in step 2
is first decoded with the old one, then everything is written with
SpecificCharacterSet "ISO_IR 192".  A file whose text does not decode with
its own character set is refused rather than made wrong.

Deflated Explicit VR Little Endian: the dataset is inflated (at most
`max_inflated` bytes, else refused), split and changed the same way, and
deflated again.
"""

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom.charset import python_encoding
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from dicomnodes.archive.storage import FileRegion, write_atomically

UTF8 = "ISO_IR 192"
_PIXEL_GROUP = 0x7FE00000  # the dataset from here on is copied as it is
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_MAX_META = 1 << 16
_TEXT_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}  # the VRs SpecificCharacterSet applies to


class RewriteError(ValueError):
    """This file cannot be rewritten (the message says why); it is left as it was."""


@dataclass(frozen=True)
class Rewritten:
    size: int  # of the new file, in bytes
    charset: str  # SpecificCharacterSet of the new file ("" if none)


def rewrite_file(path: Path, values: dict, *, fsync: bool, max_inflated: int) -> Rewritten:
    """Give the stored file at `path` the `values` ({keyword: text; None
    removes the attribute}); see the module docstring.  Raises RewriteError, or OSError (StorageFull)."""
    with open(path, "rb") as source:
        meta = _file_meta(source)
        syntax = _transfer_syntax(meta)
        if syntax.is_deflated:
            chunks, charset = _deflated(source, values, syntax, max_inflated)
        else:
            head, charset = _changed_head(source, values, syntax)
            tail_offset = source.tell()
            tail = FileRegion(source.fileno(), tail_offset, os.fstat(source.fileno()).st_size - tail_offset)
            chunks = [meta, head, tail]
        write_atomically(path, chunks, overwrite=True, fsync=fsync)
    return Rewritten(sum(len(c) for c in chunks), charset)


def _file_meta(source) -> bytes:
    """Preamble, "DICM" and the group 0002 elements, as bytes (explicit VR
    little endian, PS3.10 7.1); `source` is left at the dataset's start."""
    meta = bytearray(source.read(132))
    if len(meta) < 132 or meta[128:132] != b"DICM":
        raise RewriteError("not a DICOM Part 10 file (no DICM prefix)")
    while True:
        position = source.tell()
        header = source.read(8)
        if len(header) < 8 or header[:2] != b"\x02\x00":
            source.seek(position)
            return bytes(meta)
        if header[4:6] in _LONG_VRS:
            header += source.read(4)
            length = int.from_bytes(header[8:12], "little")
        else:
            length = int.from_bytes(header[6:8], "little")
        if len(meta) + length > _MAX_META:
            raise RewriteError("the file meta group is implausibly long")
        meta += header + source.read(length)


def _transfer_syntax(meta: bytes) -> UID:
    try:
        group = read_dataset(io.BytesIO(meta[132:]), False, True)
        syntax = UID(str(group.TransferSyntaxUID).strip("\x00 "))
    except Exception as exc:  # no or unreadable (0002,0010)
        raise RewriteError(f"the file meta has no readable transfer syntax ({exc})") from exc
    if not syntax.is_transfer_syntax:
        raise RewriteError(f"transfer syntax {syntax} is unknown: its encoding cannot be rewritten safely")
    return syntax


def _stop_at_pixels(tag, vr, length):
    return int(tag) >= _PIXEL_GROUP


def _changed_head(source, values: dict, syntax: UID):
    """The dataset up to group 7FE0 read from `source`, changed, encoded
    again; `source` is left at the first byte not read (the tail)."""
    try:
        ds = read_dataset(source, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_stop_at_pixels)
    except Exception as exc:  # pydicom raises assorted errors on damaged files
        raise RewriteError(f"the dataset could not be read ({type(exc).__name__}: {exc})") from exc
    charset = _set_values(ds, values)
    out = DicomBytesIO()
    out.is_little_endian = syntax.is_little_endian
    out.is_implicit_VR = syntax.is_implicit_VR
    try:
        write_dataset(out, ds)
    except Exception as exc:
        raise RewriteError(f"the dataset could not be encoded again ({type(exc).__name__}: {exc})") from exc
    return out.getvalue(), charset


def _set_values(ds, values: dict) -> str:
    """Put `values` into `ds`, switching it to UTF-8 if a new value needs
    it; returns the character set the dataset ends with."""
    old = _charset_terms(ds)
    if any(v is not None and not v.isascii() for v in values.values()) and old != [UTF8]:
        _decode_all(ds, old)
        ds.SpecificCharacterSet = UTF8
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)
    return "\\".join(_charset_terms(ds))


def _charset_terms(ds) -> list:
    if "SpecificCharacterSet" not in ds:
        return []
    value = ds.SpecificCharacterSet
    terms = [value] if isinstance(value, str) else list(value)
    return [str(t).strip() for t in terms]


def _decode_all(ds, terms):
    """Decode every text value with the dataset's own character set(s);
    refuse a term pydicom does not know, or text it had to replace."""
    declared = "\\".join(terms)
    if any(t and t not in python_encoding for t in terms):
        raise RewriteError(f"its character set {declared!r} is unknown; its text cannot be converted")
    try:
        ds.decode()
    except Exception as exc:
        raise RewriteError(f"its text does not decode with its character set ({exc})") from exc
    bad = []

    def check(dataset, element):
        if element.VR in _TEXT_VRS and "\ufffd" in str(element.value):
            bad.append(element.keyword or str(element.tag))

    ds.walk(check)
    if bad:
        raise RewriteError(f"{', '.join(bad[:5])} does not decode with its character set {declared!r}")


def _deflated(source, values: dict, syntax: UID, max_inflated: int):
    """Meta + the changed dataset deflated again (PS3.5 A.5: raw deflate)."""
    meta_end = source.tell()
    source.seek(0)
    meta = source.read(meta_end)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = bytearray()
    try:
        while chunk := source.read(1 << 20):
            while chunk:
                data += inflater.decompress(chunk, max_inflated + 1 - len(data))
                if len(data) > max_inflated:
                    raise RewriteError(f"the deflated dataset inflates beyond {max_inflated // 2**20} MB")
                chunk = inflater.unconsumed_tail
        data += inflater.flush()
    except zlib.error as exc:
        raise RewriteError(f"the deflated dataset does not inflate ({exc})") from exc
    if len(data) > max_inflated:
        raise RewriteError(f"the deflated dataset inflates beyond {max_inflated // 2**20} MB")
    inflated = io.BytesIO(bytes(data))
    head, charset = _changed_head(inflated, values, syntax)
    deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflater.compress(head) + deflater.compress(memoryview(data)[inflated.tell() :]) + deflater.flush()
    return [meta, body], charset
