"""Streaming answers under daphne: a sync iterator of bytes sent piece by
piece, read in a worker thread.

Under ASGI, Django reads a plain iterator (FileResponse too) to its end
before sending it — a whole study in memory; an async one is sent as it
comes.  `streamed()` wraps a sync iterator (a ZIP being written, WADO-RS
parts, a viewer file) so that:

- chunks are gathered in the worker thread up to `BATCH` bytes per hop to
  the event loop: a hop per 1 MiB file chunk kept a WADO-RS series at
  400 MB/s (bench/dicomweb.py), the thread switches, not the disk, being the
  cost;
- the next batch is read while the current one is sent (two batches in
  memory at most per answer); the web process's send gate
  (portal/daphne_server.py) holds each batch until the client takes it.
  a client that reads nothing holds about three batches of the web
  process (the batch sent, Twisted's chunked-encoding copy of it, the next
  one read): with 4 MiB that was 21 MiB, at or over test_web.py's bound of
  20, with 2 MiB it is 9-11.  Stored instances of WADO-RS, the bulk of
  what is sent, no longer come this way (`PiecesResponse`, sendfile).
"""

import asyncio
import os
from typing import NamedTuple

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse

BATCH = 2 * 2**20
FILE_CHUNK = 1 << 20  # bytes read from a file at a time
# The ASGI extension of a server that sends a file's bytes itself
# (portal/daphne_server.py advertises it on plain HTTP connections).
ZERO_COPY = "http.response.zerocopysend"


class FileChanged(OSError):
    """A file is not the size it had when the answer's length was counted."""


def streamed(request, chunks, *, content_type, status=200):
    """A streaming answer of `chunks` (an iterator of bytes)."""
    content = async_batches(chunks) if isinstance(request, ASGIRequest) else chunks
    return StreamingHttpResponse(content, content_type=content_type, status=status)


class FileRange(NamedTuple):
    """`length` bytes from `offset` of the file at `path`, which is `size`
    bytes long (checked when it is opened to be sent)."""

    path: os.PathLike
    offset: int
    length: int
    size: int


class PiecesResponse(StreamingHttpResponse):
    """A streaming answer of known length made of bytes and `FileRange`s.

    Under our web process (`ZERO_COPY` in the scope's extensions)
    `pacs_site.asgi.Handler` sends the files' bytes with `os.sendfile`,
    straight from the page cache to the socket; elsewhere (TLS, the test
    client) the pieces are read and streamed as `streamed()` does.  Sending
    a 300 MB WADO-RS series read file by file cost three copies of every
    byte in Python (read, batch join, Twisted's chunked-encoding join) and
    kept it at 0.64-0.76 of Orthanc's MB/s (bench/dicomweb.py)."""

    def __init__(self, request, pieces, *, content_type, status=200):
        self.pieces = list(pieces)
        asgi = isinstance(request, ASGIRequest)
        self.zero_copy = asgi and ZERO_COPY in (request.scope.get("extensions") or {})
        chunks = _piece_chunks(self.pieces)
        super().__init__(async_batches(chunks) if asgi else chunks, content_type=content_type, status=status)
        self["Content-Length"] = str(sum(p.length if isinstance(p, FileRange) else len(p) for p in self.pieces))


def _piece_chunks(pieces):
    for piece in pieces:
        if isinstance(piece, FileRange):
            yield from file_chunks(piece.path, offset=piece.offset, length=piece.length, size=piece.size)
        else:
            yield piece


def open_range(piece: FileRange):
    """The file of `piece`, open, after checking its size."""
    f = open(piece.path, "rb")
    try:
        size = os.fstat(f.fileno()).st_size
        if size != piece.size:
            raise FileChanged(f"{os.fspath(piece.path)} is {size} bytes, {piece.size} were counted")
    except BaseException:
        f.close()
        raise
    return f


def file_chunks(path, *, offset=0, length=None, size=None):
    """The bytes of a file (from `offset`, `length` of them), a chunk at a
    time; with `size`, the file must be that long and yield all `length`."""
    with open(path, "rb") if size is None else open_range(FileRange(path, offset, length, size)) as f:
        f.seek(offset)
        left = length
        while left is None or left > 0:
            chunk = f.read(FILE_CHUNK if left is None else min(FILE_CHUNK, left))
            if not chunk:
                if size is not None and left:
                    raise FileChanged(f"{os.fspath(path)} ended {left} bytes early")
                return
            if left is not None:
                left -= len(chunk)
            yield chunk


def _next_batch(chunks):
    parts, size = [], 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= BATCH:
            break
    return b"".join(parts) if parts else None


async def async_batches(chunks):
    """The batches of `chunks`, the next one read in a worker thread while
    the current one is sent."""
    next_batch = sync_to_async(_next_batch, thread_sensitive=False)
    pending = asyncio.ensure_future(next_batch(chunks))
    try:
        while (batch := await pending) is not None:
            pending = asyncio.ensure_future(next_batch(chunks))
            yield batch
    finally:
        if not pending.done():
            # The client went away: let the read in flight finish before the
            # iterator is dropped (a generator cannot be closed while another
            # thread runs it).
            await asyncio.wait([pending])
        if not pending.cancelled():
            pending.exception()  # retrieved: no "never retrieved" warning
