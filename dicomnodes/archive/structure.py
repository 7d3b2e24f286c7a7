"""The structure of a received dataset, checked before it is stored.

A C-STORE is answered Success only for a dataset whose elements can all be
read back: `check_structure()` walks every element of the raw bytes (PS3.5
7.1 and 7.5) without decoding a value and raises `MalformedDataset` with the
reason and the byte offset when

- an element's header or value runs past the end of the dataset, of its item
  or of its defined-length sequence (a truncated transfer, a length such as
  0xFFFFFFF0);
- an explicit VR is not one PS3.5 defines;
- an undefined length is on a VR that cannot have one, a sequence holds
  something other than items, an item or sequence is never closed, or a
  delimiter stands where none belongs;
- sequences nest deeper than `MAX_DEPTH` (every later reader — pydicom,
  DCMTK, viewers — recurses per level; pydicom fails at about 2,000).

The walk is iterative and skips values, so it costs well under a
microsecond per element; it also collects the header's raw values for the
index, so the dataset is walked once (docs/storage.md, "One walk per
received dataset").

Deflated datasets (PS3.5 A.5) are inflated by `inflate_bounded()` into a
temporary file, a megabyte at a time, and refused past a size limit: the
bytes of a "deflate bomb" never reach memory.
"""

import mmap
import struct
import tempfile
import zlib
from contextlib import contextmanager

from pydicom.datadict import DicomDictionary

from dicomnodes.archive.header import UnreadableDataset

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# The whole dataset is deflated (PS3.5 A.5; JPIP Referenced Deflate, A.6).
DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"}

# Deeper than any real dataset (SR content trees, RT plans nest about ten
# levels); shallow enough for every reader's recursion.
MAX_DEPTH = 64

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"})
SHORT_VRS = frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FL",
        b"FD",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
# In implicit VR a defined-length sequence looks like any value: the data
# dictionary says which tags are sequences, so that their items are walked too.
_SEQUENCE_TAGS = frozenset(tag for tag, entry in DicomDictionary.items() if entry[0] == "SQ")

# What a frame of the walk is inside of.
_DATASET, _ITEM_FRAME, _SEQUENCE, _FRAGMENTS = "dataset", "item", "sequence", "fragments"


class MalformedDataset(UnreadableDataset):
    """The dataset's structure is inconsistent: C000, bytes quarantined."""


class DatasetTooLarge(UnreadableDataset):
    """A deflated dataset inflates beyond the limit: C000, bytes quarantined."""


class _Frame:
    __slots__ = ("kind", "end", "limit", "implicit")

    def __init__(self, kind, end, limit, implicit):
        self.kind = kind  # _DATASET, _ITEM_FRAME, _SEQUENCE or _FRAGMENTS
        self.end = end  # where a defined length ends, else None (a delimiter ends it)
        self.limit = limit  # no byte of this frame lies at or beyond this offset
        self.implicit = implicit


def check_structure(
    data, transfer_syntax_uid: str, *, max_depth: int = MAX_DEPTH, collect=None, collect_until=None
) -> dict | None:
    """Raise MalformedDataset unless `data` (the dataset bytes of a transfer
    syntax other than a deflated one) is a well-formed sequence of elements.

    With `collect` (a set of tags) and `collect_until` (a tag), the walk
    also returns {tag: value bytes} of the top-level elements in `collect`
    met before the first top-level tag above `collect_until`, as
    `fastheader` would read them: the header then costs no second walk
    (bench figures in docs/storage.md).  None when nothing was asked, or
    when the dataset is big endian or not in the VR its transfer syntax
    says (the caller then reads it the slow way)."""
    big = transfer_syntax_uid == EXPLICIT_VR_BIG_ENDIAN
    implicit = transfer_syntax_uid == IMPLICIT_VR_LITTLE_ENDIAN
    if not implicit and not big and len(data) >= 6 and not bytes(data[4:6]).isalpha():
        # Explicit VR negotiated, implicit VR sent: pydicom and DCMTK read such
        # datasets by looking at the first element, and so do we.
        implicit = True
        collect = None
    if big:
        collect = None
    walk = _Walk(data, implicit=implicit, big=big, max_depth=max_depth)
    return walk.run(collect, collect_until)


class _Walk:
    def __init__(self, data, *, implicit, big, max_depth):
        self.data = data
        self.size = len(data)
        self.max_depth = max_depth
        self.max_frames = 2 * max_depth  # a sequence and its item per level
        order = ">" if big else "<"
        self.tag_u32 = struct.Struct(order + "HHI").unpack_from
        self.tag_vr_u16 = struct.Struct(order + "HH2sH").unpack_from
        self.u32 = struct.Struct(order + "I").unpack_from
        # Items and delimiters are always tag + 4-byte length; in big endian too.
        self.implicit = implicit

    def run(self, collect=None, collect_until=None):
        data, size = self.data, self.size
        tag_u32, tag_vr_u16, u32 = self.tag_u32, self.tag_vr_u16, self.u32
        frame = _Frame(_DATASET, size, size, self.implicit)
        stack = []
        pos = 0
        found = None if collect is None else {}
        while True:
            if frame.end is not None and pos == frame.end:
                if not stack:
                    return found
                frame = stack.pop()
                continue
            limit = frame.limit
            if pos + 8 > limit:
                self._ended_early(frame, stack, pos, limit)
                return found  # only trailing zero padding after the top-level dataset
            group, elem, length = tag_u32(data, pos)
            tag = (group << 16) | elem
            kind = frame.kind

            if kind is _SEQUENCE or kind is _FRAGMENTS:
                pos += 8
                if tag == SEQUENCE_END:
                    if frame.end is not None:
                        raise self._error(pos - 8, "sequence delimiter in a sequence of defined length")
                    frame = stack.pop()
                    continue
                if tag != ITEM:
                    raise self._error(pos - 8, f"{_name(tag)} where an item belongs")
                if length == UNDEFINED:
                    if kind is _FRAGMENTS:
                        raise self._error(pos - 8, "pixel data fragment of undefined length")
                    if len(stack) >= self.max_frames:
                        raise self._error(pos - 8, f"sequences nested over {self.max_depth} deep")
                    stack.append(frame)
                    frame = _Frame(_ITEM_FRAME, None, limit, frame.implicit)
                    continue
                if pos + length > limit:
                    raise self._error(pos - 8, f"item length {length} past the end")
                if kind is _FRAGMENTS:
                    pos += length
                    continue
                if len(stack) >= self.max_frames:
                    raise self._error(pos - 8, f"sequences nested over {self.max_depth} deep")
                stack.append(frame)
                frame = _Frame(_ITEM_FRAME, pos + length, pos + length, frame.implicit)
                continue

            # An element of a dataset or of an item.
            if group == 0xFFFE:
                if tag == ITEM_END and kind is _ITEM_FRAME and frame.end is None:
                    pos += 8
                    frame = stack.pop()
                    continue
                raise self._error(pos, f"{_name(tag)} outside a sequence")
            if frame.implicit:
                vr = None
                pos += 8
            else:
                group, elem, vr, length = tag_vr_u16(data, pos)
                if vr in LONG_VRS:
                    if pos + 12 > limit:
                        raise self._error(pos, f"{_name(tag)} header past the end")
                    length = u32(data, pos + 8)[0]
                    pos += 12
                elif vr in SHORT_VRS:
                    pos += 8
                else:
                    raise self._error(pos, f"{_name(tag)} VR {vr!r} unknown")
            if collect is not None and kind is _DATASET:
                if tag > collect_until:
                    collect = None
                elif tag in collect and length != UNDEFINED:
                    # (a value past the end is cut short here, and refused below)
                    found[tag] = bytes(data[pos : pos + length])  # data may be a memoryview
            if length == UNDEFINED:
                if tag == _PIXEL_DATA and vr in (None, b"OB", b"OW"):
                    inner_kind, inner_implicit = _FRAGMENTS, False  # encapsulated (PS3.5 A.4)
                elif vr is None or vr == b"SQ" or vr == b"UN":
                    # Items inside an undefined-length UN are implicit VR (PS3.5 6.2.2).
                    inner_kind, inner_implicit = _SEQUENCE, frame.implicit or vr == b"UN"
                else:
                    raise self._error(pos, f"{_name(tag)} undefined length on VR {vr.decode('ascii')}")
                if len(stack) >= self.max_frames:
                    raise self._error(pos, f"sequences nested over {self.max_depth} deep")
                stack.append(frame)
                frame = _Frame(inner_kind, None, limit, inner_implicit)
                continue
            if pos + length > limit:
                where = "" if kind is _DATASET else " of its item"
                raise self._error(pos, f"{_name(tag)} length {length} past the end{where}")
            if vr == b"SQ" or (vr is None and tag in _SEQUENCE_TAGS):
                if len(stack) >= self.max_frames:
                    raise self._error(pos, f"sequences nested over {self.max_depth} deep")
                stack.append(frame)
                frame = _Frame(_SEQUENCE, pos + length, pos + length, frame.implicit)
                continue
            pos += length

    def _ended_early(self, frame, stack, pos, limit):
        """The bytes of `frame` end at `limit` with fewer than 8 left."""
        if frame.end is None:  # a delimiter was due
            what = "sequence" if frame.kind in (_SEQUENCE, _FRAGMENTS) else "item"
            raise self._error(pos, f"{what} never closed")
        if stack:
            raise self._error(pos, f"{limit - pos} bytes left at the end of an item")
        if any(self.data[pos:limit]):
            raise self._error(pos, f"{limit - pos} stray bytes at the end")

    @staticmethod
    def _error(pos, reason):
        return MalformedDataset(f"{reason} (byte {pos})")


def _name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@contextmanager
def inflate_bounded(raw, *, limit: int, prefix: bytes = b"", folder=None, chunk: int = 1 << 20):
    """Inflate a deflated dataset (raw deflate, RFC 1951) into an anonymous
    temporary file after `prefix`, a chunk at a time; yield a read-only
    mmap of the whole file (prefix included; empty bytes if nothing).

    Raises DatasetTooLarge once more than `limit` bytes come out, and
    MalformedDataset when the stream is not valid deflate.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    # Released on the way out: a view left alive (by a traceback) would keep
    # the caller from releasing `raw`.
    with memoryview(raw) as view, tempfile.TemporaryFile(dir=folder) as out:
        out.write(prefix)
        try:
            offset = 0
            while offset < len(view) or inflater.unconsumed_tail:
                if inflater.unconsumed_tail:
                    piece = inflater.decompress(inflater.unconsumed_tail, chunk)
                else:
                    piece = inflater.decompress(view[offset : offset + chunk], chunk)
                    offset += chunk
                total += len(piece)
                if total > limit:
                    raise DatasetTooLarge(f"the deflated dataset inflates beyond {limit // 2**20} MB")
                out.write(piece)
                if inflater.eof:
                    break
            piece = inflater.flush()
            total += len(piece)
            if total > limit:
                raise DatasetTooLarge(f"the deflated dataset inflates beyond {limit // 2**20} MB")
            out.write(piece)
        except zlib.error as exc:
            raise MalformedDataset(f"the deflated dataset cannot be inflated: {exc}") from exc
        if not inflater.eof:
            raise MalformedDataset("the deflated dataset ends before its deflate stream does")
        out.flush()
        if out.tell() == 0:
            yield b""
            return
        with mmap.mmap(out.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped
