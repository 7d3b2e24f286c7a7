"""The body of a STOW-RS request: `multipart/related` read as a stream,
one Part 10 file at a time, within bounds.

Python's `email` parser (and Django's, which only knows form data) would
hold the whole body in memory.  `read_parts()` reads the request in 1 MiB
chunks and yields each part as soon as its closing delimiter arrives:

- a part up to `SPILL_AT` (4 MiB, as for C-STORE) stays in memory;
- a larger one goes on into a `SpoolFile` in the storage folder as it
  arrives (the file the dataset is then copied from, file to file); its
  File Meta Information is read from the first 4 MiB, and the spool holds
  the dataset only, which is what `store_received(spool=…)` expects;
- a part above `MAX_PART` is cut there: its UIDs are read from its head
  (to name them in the answer), the rest is read and dropped;
- the whole body is read to at most `MAX_BODY` bytes (`TooLarge` beyond);
  both bounds are settings (`PACS_STOW_MAX_PART_MB`, `PACS_STOW_MAX_BODY_MB`),
  read once when the web process starts;
- a part's headers at most `MAX_HEADERS` bytes, the preamble before the
  first delimiter at most `MAX_PREAMBLE`.

Framing (RFC 2046 5.1.1): the delimiter is CRLF "--" boundary; the first
one may open the body; transport padding (spaces, tabs) may follow a
delimiter before its CRLF; "--" after one closes the body; what follows
the close (the epilogue) is ignored.
"""

import io
import re
from dataclasses import dataclass, field

from django.conf import settings
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble

from dicomnodes.archive.spool import SPILL_AT, SpoolFile

CHUNK = 2**20
MAX_PART = settings.PACS_STOW_MAX_PART_MB * 2**20  # 4 GiB by default
MAX_BODY = settings.PACS_STOW_MAX_BODY_MB * 2**20  # 64 GiB by default
MAX_HEADERS = 16 * 2**10
MAX_PREAMBLE = 64 * 2**10
MAX_META = 2**20  # the File Meta Information group, read from the part's head
META_FIRST = 2**14  # where it is looked for first
_UID = re.compile(r"[0-9.]{0,64}")


class MalformedBody(ValueError):
    """The body is not multipart as its Content-Type says (400)."""


class TooLarge(ValueError):
    """The body passed MAX_BODY (413)."""


@dataclass(frozen=True)
class FileMeta:
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    offset: int  # where the dataset starts in the Part 10 file


def read_file_meta(head) -> FileMeta:
    """The File Meta Information of a Part 10 file that starts with `head`
    (bytes-like); InvalidDicomError if there is none we can use.

    Read from the first META_FIRST bytes when the group ends in them (it
    nearly always does), else from the first MAX_META: `head` is the whole
    part, and copying a megabyte of it for a group of some 200 bytes was
    most of the time this took."""
    if len(head) > META_FIRST:
        try:
            meta = _read_meta(head, META_FIRST)
        except InvalidDicomError:
            meta = None
        if meta is not None and meta.offset < META_FIRST:
            return meta
    return _read_meta(head, MAX_META)


def _read_meta(head, limit) -> FileMeta:
    fp = io.BytesIO(memoryview(head)[:limit])
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except InvalidDicomError:
        raise
    except Exception as exc:  # a cut or malformed group 2: pydicom raises many kinds
        raise InvalidDicomError(f"unreadable File Meta Information ({exc.__class__.__name__})") from exc
    syntax = str(meta.get("TransferSyntaxUID", "") or "")
    if not syntax:
        raise InvalidDicomError("no Transfer Syntax UID in the File Meta Information")
    offset = fp.tell()
    if offset >= len(head) or offset >= limit:
        raise InvalidDicomError("no dataset after the File Meta Information")
    uids = [
        syntax,
        str(meta.get("MediaStorageSOPClassUID", "") or ""),
        str(meta.get("MediaStorageSOPInstanceUID", "") or ""),
    ]
    if not all(_UID.fullmatch(uid) for uid in uids[1:]) or not _UID.fullmatch(syntax):
        # The store path writes them into our file meta (ASCII digits and dots).
        raise InvalidDicomError("a UID in the File Meta Information is not a UID")
    return FileMeta(*uids, offset)


@dataclass
class Part:
    """One part of the body.  `meta` is None and `problem` says why when it
    is not a Part 10 file; `cut` when it passed MAX_PART.  `dataset()` is
    the dataset's bytes (after the file meta): bytes, or a read-only view
    of `spool` to release before `close()`."""

    content_type: str = "application/dicom"
    meta: FileMeta | None = None
    problem: str = ""
    cut: bool = False
    size: int = 0
    spool: SpoolFile | None = None
    _head: bytearray = field(default_factory=bytearray)

    def write(self, data):
        self.size += len(data)
        if self.cut or self.problem:
            return
        if self.size > MAX_PART:
            self._cut()
            return
        if self.spool is not None:
            self.spool.write(data)
            return
        self._head += data
        if len(self._head) > SPILL_AT:
            self._spill()

    def _spill(self):
        """Too big for memory: the file meta is read from the head, and the
        dataset goes on into a spool file."""
        if not self._read_meta():
            return
        self.spool = SpoolFile(bytes(memoryview(self._head)[self.meta.offset :]))
        self._head = bytearray()

    def _cut(self):
        """Above MAX_PART: the rest is dropped.  Its UIDs come from the head
        when it had not spilled yet (a bound below SPILL_AT)."""
        self.cut = True
        if self.meta is None:
            self._read_meta()
        self.close()

    def _read_meta(self):
        try:
            self.meta = read_file_meta(self._head)
        except InvalidDicomError as exc:
            self.problem = f"not a DICOM Part 10 file: {exc}"
            self._head = bytearray()
            return False
        return True

    def finish(self):
        if self.spool is None and not self.problem and not self.cut:
            self._read_meta()

    def dataset(self):
        if self.spool is not None:
            return self.spool.getbuffer()
        return memoryview(self._head)[self.meta.offset :]

    def close(self):
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        self._head = bytearray()


def read_parts(stream, boundary: str, *, chunk=CHUNK, max_body=MAX_BODY):
    """Yield each Part of the multipart body read from `stream` (`read(n)`).

    MalformedBody when the framing is broken before a part's content
    starts; a body that ends inside a part yields that part with a
    `problem`.  TooLarge beyond `max_body`.  The caller closes each part.

    The helpers below take and return (buffer, position): a chunk is read
    where it lies rather than cut into copies, and a part gets views of it
    (it copies what it keeps).  Slicing at every delimiter, header and
    chunk was 4-5 copies of each byte: 85-119 -> 21-24 ms of CPU for a 25 MB
    body of 50 parts (bench/dicomweb.py's STOW-RS requests).
    """
    reader = _Reader(stream, chunk, max_body)
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    # The first delimiter may open the body: read it as if a CRLF came first.
    buffer, _pos, at = _find(reader, b"\r\n" + reader.read(), 0, delimiter, MAX_PREAMBLE, "no opening boundary")
    while True:
        buffer, pos, closing = _end_of_delimiter(reader, buffer, at + len(delimiter))
        if closing:
            return
        buffer, pos, headers = _headers(reader, buffer, pos)
        part = Part(content_type=headers.get("content-type", "application/dicom"))
        buffer, at = _body(reader, buffer, pos, delimiter, part)
        part.finish()
        yield part
        if buffer is None:
            return


class _Reader:
    def __init__(self, stream, chunk, max_body):
        self.stream, self.chunk, self.max_body, self.total = stream, chunk, max_body, 0

    def read(self):
        data = self.stream.read(self.chunk)
        self.total += len(data)
        if self.total > self.max_body:
            raise TooLarge(f"the body passed {self.max_body} bytes")
        return data


def _find(reader, buffer, pos, needle, limit, problem):
    """(buffer, pos, index of `needle` at or after pos) reading more as
    needed, within `limit` bytes from `pos` (which moves when more is read)."""
    while True:
        at = buffer.find(needle, pos)
        if at >= 0:
            return buffer, pos, at
        if len(buffer) - pos > limit:
            raise MalformedBody(problem)
        more = reader.read()
        if not more:
            raise MalformedBody(problem)
        buffer, pos = buffer[pos:] + more, 0


def _at_least(reader, buffer, pos, size):
    """(buffer, pos) with at least `size` bytes from pos, unless the body ends first."""
    while len(buffer) - pos < size:
        more = reader.read()
        if not more:
            break
        buffer, pos = buffer[pos:] + more, 0
    return buffer, pos


def _end_of_delimiter(reader, buffer, pos):
    """After a delimiter: (buffer, position after its line, whether it closed the body)."""
    buffer, pos = _at_least(reader, buffer, pos, 2)
    if buffer.startswith(b"--", pos):
        return b"", 0, True
    buffer, pos, eol = _find(reader, buffer, pos, b"\r\n", 1024, "no line end after a boundary")
    if buffer[pos:eol].strip(b" \t"):
        raise MalformedBody("text after a boundary")
    return buffer, eol + 2, False


def _headers(reader, buffer, pos):
    """A part's headers (names lower-cased): (buffer, position after the empty line, headers)."""
    buffer, pos = _at_least(reader, buffer, pos, 2)
    if buffer.startswith(b"\r\n", pos):
        return buffer, pos + 2, {}
    buffer, pos, end = _find(reader, buffer, pos, b"\r\n\r\n", MAX_HEADERS, "a part's headers are too long or cut")
    headers = {}
    for line in buffer[pos:end].decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise MalformedBody("a part header without a colon")
        headers[name.strip().lower()] = value.strip()
    return buffer, end + 4, headers


def _body(reader, buffer, pos, delimiter, part):
    """Feed the part its content from `pos` up to the next delimiter:
    (buffer, the delimiter's index), or (None, 0) when the body ended first."""
    keep = len(delimiter) - 1  # a delimiter may straddle two chunks
    while True:
        at = buffer.find(delimiter, pos)
        if at >= 0:
            part.write(memoryview(buffer)[pos:at])
            return buffer, at
        if len(buffer) - pos > keep:
            part.write(memoryview(buffer)[pos:-keep])
            pos = len(buffer) - keep
        more = reader.read()
        if not more:
            # Cut short: what arrived is this part, failed as unreadable.
            part.write(memoryview(buffer)[pos:])
            part.finish()
            part.problem = part.problem or "the body ends inside this part (no closing boundary)"
            return None, 0
        tail = buffer[pos:]
        if len(more) >= keep and (tail + more[:keep]).find(delimiter) < 0:
            # No delimiter across the two: the tail is the part's, the
            # chunk becomes the buffer as it is (not copied behind the tail).
            part.write(tail)
            buffer, pos = more, 0
        else:
            buffer, pos = tail + more, 0
