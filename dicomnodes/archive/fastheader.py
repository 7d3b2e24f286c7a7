"""A header reader for the hot path: little-endian datasets, straight from bytes.

pydicom's `read_partial` costs 0.3–1 ms per instance here (it builds a
Dataset and walks every element through its generator); this walker reads
only the few text elements the index needs from the raw dataset bytes of an
implicit or explicit VR little endian dataset (that is, every transfer
syntax but big endian and deflate, whose encapsulated pixel data come after
the tags we want anyway).  On anything unusual it returns None and the caller
uses pydicom (`header.read_header`), so it is never less correct than that.
"""

import struct

from pydicom.charset import TEXT_VR_DELIMS, convert_encodings, decode_bytes
from pydicom.valuerep import PersonName

from dicomnodes.archive.header import _LAST_TAG, _WANTED, build_header
from dicomnodes.archive.structure import IMPLICIT_VR_LITTLE_ENDIAN
from dicomnodes.archive.structure import ITEM as _ITEM
from dicomnodes.archive.structure import ITEM_END as _ITEM_END
from dicomnodes.archive.structure import LONG_VRS as _LONG_VRS
from dicomnodes.archive.structure import SEQUENCE_END as _SEQ_END
from dicomnodes.archive.structure import SHORT_VRS as _SHORT_VRS
from dicomnodes.archive.structure import UNDEFINED as _UNDEFINED

_NOT_LITTLE_ENDIAN_EXPLICIT = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.101.1"}

_KEYWORD_BY_TAG = {tag: kw for kw, tag in _WANTED.items()}
WANTED_TAGS = frozenset(_KEYWORD_BY_TAG)  # what check_structure(collect=...) is asked for
LAST_TAG = _LAST_TAG
_PN_TAGS = {0x00100010, 0x00080090}
_TEXT_TAGS = {0x00080080, 0x00081010, 0x00081030, 0x0008103E, 0x00100020, 0x00100021, 0x00080050, 0x00200010}
_tag_len = struct.Struct("<HHI").unpack_from
_tag_vr_len16 = struct.Struct("<HH2sH").unpack_from
_u32 = struct.Struct("<I").unpack_from


class _Unusual(Exception):
    """Something this walker does not handle: let pydicom do it."""


def read_header_fast(
    raw: bytes, transfer_syntax_uid: str, *, sop_class_uid: str, sop_instance_uid: str, found: dict | None = None
):
    """The InstanceHeader of a received dataset, or None if pydicom must read it.

    `found`: the wanted elements' raw values as `structure.check_structure`
    collected them (WANTED_TAGS) while it walked the same bytes; without
    it, this walks the dataset itself.  Raises UnreadableDataset when the
    identifying UIDs are missing or invalid.
    """
    if transfer_syntax_uid in _NOT_LITTLE_ENDIAN_EXPLICIT:
        return None
    implicit = transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    try:
        if found is None:
            found = _walk(raw, implicit)
        values = _decode(found)
    except (_Unusual, struct.error, UnicodeError, LookupError, ValueError):
        return None
    return build_header(
        values,
        media_sop_class_uid=sop_class_uid,
        media_sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=transfer_syntax_uid,
    )


def _walk(data, implicit):
    """{tag: raw value bytes} of the wanted top-level elements."""
    found = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        tag, length, header = _element_header(data, pos, implicit)
        if tag > _LAST_TAG:
            break
        if tag >> 16 == 0xFFFE:
            raise _Unusual("delimiter at the top level")
        pos += header
        if length == _UNDEFINED:
            pos = _skip_undefined(data, pos, implicit)
            continue
        if pos + length > end:
            raise _Unusual("value runs past the end")
        if tag in _KEYWORD_BY_TAG:
            found[tag] = bytes(data[pos : pos + length])  # data may be a memoryview
        pos += length
    return found


def _element_header(data, pos, implicit):
    """(tag, value length, header size) of the element at `pos`."""
    if implicit:
        group, elem, length = _tag_len(data, pos)
        return (group << 16) | elem, length, 8
    group, elem, vr, length = _tag_vr_len16(data, pos)
    tag = (group << 16) | elem
    if group == 0xFFFE:  # item and delimiters carry no VR
        return tag, _u32(data, pos + 4)[0], 8
    if vr in _LONG_VRS:
        return tag, _u32(data, pos + 8)[0], 12
    if vr in _SHORT_VRS:
        return tag, length, 8
    raise _Unusual(f"VR {vr!r}")


def _skip_undefined(data, pos, implicit):
    """Skip an undefined-length sequence (or UN/OB value) starting at `pos`;
    return the position after its delimiter.  Items inside an undefined-length
    UN are implicit VR (PS3.5 6.2.2)."""
    end = len(data)
    while pos + 8 <= end:
        group, elem, length = _tag_len(data, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unusual("no item in a sequence")
        if length == _UNDEFINED:
            pos = _skip_item(data, pos, implicit)
        else:
            pos += length
    raise _Unusual("sequence runs past the end")


def _skip_item(data, pos, implicit):
    end = len(data)
    while pos + 8 <= end:
        tag, length, header = _element_header(data, pos, implicit)
        pos += header
        if tag == _ITEM_END:
            return pos
        if length == _UNDEFINED:
            pos = _skip_undefined(data, pos, implicit)
        else:
            pos += length
    raise _Unusual("item runs past the end")


def _decode(found):
    """{keyword: text}, decoded as the Specific Character Set says."""
    charset_raw = found.get(0x00080005)
    if charset_raw:
        terms = [t.strip() for t in charset_raw.decode("ascii").split("\\")]
        encodings = convert_encodings(terms)
    else:
        encodings = ["iso8859"]
    values = dict.fromkeys(_WANTED, "")
    for tag, raw in found.items():
        keyword = _KEYWORD_BY_TAG[tag]
        if raw.isascii() and 0x1B not in raw:
            # ASCII without an ISO 2022 escape reads the same in every
            # character set pydicom knows (tests/dicomnodes/test_fastheader.py
            # checks 30,000 values against it), at a tenth of the cost of
            # PersonName and decode_bytes.  A person name drops its empty
            # trailing component groups, as PersonName does.
            text = raw.decode("ascii")
            if tag in _PN_TAGS:
                text = text.rstrip(" \x00").rstrip("=")
        elif tag in _PN_TAGS:
            text = str(PersonName(raw.rstrip(b" \x00"), encodings).decode())
        elif tag in _TEXT_TAGS:
            text = decode_bytes(raw, encodings, TEXT_VR_DELIMS)
        elif tag == 0x00080005:
            text = raw.decode("ascii")
        else:  # UI, CS, DA, TM, IS: the default repertoire
            text = raw.decode("ascii")
        values[keyword] = text.strip(" \x00")
    return values
