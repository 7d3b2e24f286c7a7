"""Data set elements as bytes, little endian (PS3.5 7.1), without a pydicom
Dataset: for answers whose layout is known in advance (C-FIND identifiers).

An `ElementCoder` holds the header of one tag and VR in one encoding
(implicit VR: tag and a 4-byte length; explicit VR: tag, VR and a 2-byte
length, or for the VRs of PS3.5 Table 7.1-1 two reserved bytes and a
4-byte length) and prefixes it to already encoded values.  Values are
padded to even length by `pad()` (PS3.5 6.2: a space for text, NUL for UI).

A value too long for a 2-byte length raises `ValueTooLong`: pydicom then
writes the element as UN (PS3.5 6.2.2), which the caller leaves to pydicom.
"""

import struct

from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

# Padding of the string VRs (PS3.5 6.2); others are binary.
_TEXT = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT")
PADDING = dict.fromkeys(_TEXT, b" ")
PADDING["UI"] = b"\x00"

IMPLICIT_HEADER = struct.Struct("<HHL")  # group, element, value length
_SHORT_LENGTH = struct.Struct("<H")
_LONG_LENGTH = struct.Struct("<L")


class ValueTooLong(ValueError):
    """A value longer than its explicit VR header can state."""


def pad(vr, value: bytes) -> bytes:
    """`value` padded to even length as its VR wants (PS3.5 6.2)."""
    return value + PADDING.get(vr, b"\x00") if len(value) % 2 else value


class ElementCoder:
    """One element's header (`tag`, `vr`) in implicit or explicit VR little
    endian; `encode(value)` returns header and value."""

    __slots__ = ("_head", "_length", "_limit")

    def __init__(self, tag, vr, *, implicit):
        group, element = tag >> 16, tag & 0xFFFF
        if implicit:
            self._head = struct.pack("<HH", group, element)
            self._length, self._limit = _LONG_LENGTH, 0xFFFFFFFE
        elif vr in EXPLICIT_VR_LENGTH_32:
            self._head = struct.pack("<HH2s2x", group, element, vr.encode("ascii"))
            self._length, self._limit = _LONG_LENGTH, 0xFFFFFFFE
        else:
            self._head = struct.pack("<HH2s", group, element, vr.encode("ascii"))
            self._length, self._limit = _SHORT_LENGTH, 0xFFFF

    def encode(self, value: bytes) -> bytes:
        """Header + `value` (already of even length)."""
        if len(value) > self._limit:
            raise ValueTooLong(f"{len(value)} bytes do not fit the element's length field")
        return self._head + self._length.pack(len(value)) + value
