"""A received dataset kept in a file while it arrives.

runscp gathers a C-STORE's dataset (`scp/sinks.StoreSink`), and STOW-RS a
part (`portal/dicomweb/upload.py`), in memory while it is small.  Once one
passes its bound, it moves into a `SpoolFile` on the storage volume and the
rest of the fragments are written there as they come (through one reusable
buffer of `WRITE_BUFFER` bytes), so a process holds at most that bound plus
the buffer per dataset, whatever its size.

Where the file will go is known before the data set arrives (a C-STORE
names its SOP Instance UID, and our file meta group is built from the
request), the spool is that file itself: a nameless file (O_TMPFILE) in the
instance's folder that begins with the file meta group (`prefix`).  When the
data set agrees with the request, the store path links it under its name
(`adopt()`): the bytes are written once, while they arrive, and never
copied again (a 500 MB instance is written once, not spooled and then
copied).  Otherwise — the data set names another SOP Instance UID (the file
meta must follow it), the duplicate policy is overwrite — the store path
copies its bytes file to file (`region()`, copy_file_range); and STOW-RS,
or a file system without O_TMPFILE, spool into an anonymous temporary file
in the storage folder, copied the same way.  Either way a spool not linked
vanishes when it is closed, or when the process ends.

`getbuffer()` answers as BytesIO's does, with a read-only view of the data
set (a mapping of the file, after the prefix): the store path reads element
headers and UIDs from it, so its pages are only ever touched by the kernel.
"""

import io
import mmap
import os
import tempfile

from dicomnodes.archive import storage

# Datasets above this are spooled to disk while they arrive (4 MiB: every
# CT, MR and CR instance stays in memory; multi-frame series and
# mammography tomosynthesis go to disk) when the spool is a temporary file
# whose bytes are copied again.  When it is the instance's own file, the
# bound is STREAM_AT.
SPILL_AT = 4 * 2**20
# A C-STORE data set above this goes into its own file as it arrives.  At
# DCMTK's 16 KB PDUs a 512×512 CT is 32 fragments: written while the next
# ones arrive, its file costs the store nothing after the last one (see
# docs/storage.md, "Written while it arrives").  Below it (a 128×128 CT is
# 33 KB) the data set stays in memory: one write of the whole, and its
# header read without a mapping.
STREAM_AT = 64 * 1024
# Fragments are gathered to this before a write: a 16 KB write costs this
# machine 7 µs more than its share of a 256 KB one (300 × 525 KB into new
# O_TMPFILEs: 350 µs a file in 16 KB writes, 114 µs in one).  Our own
# buffer rather than io.BufferedRandom's, to start each write's writeback.
WRITE_BUFFER = 256 * 1024


class SpoolFile(io.BytesIO):
    """Write-only while the dataset arrives; then `getbuffer()`, `region()`
    and `adopt()`.

    `head`: the bytes that came before it spilled.  `place_at`: the path the
    instance will have, when known, and `prefix` the bytes its file begins
    with there (preamble and file meta group): the spool is then a nameless
    file in that folder, if the file system allows one.  `folder`: where an
    anonymous temporary goes otherwise (default: the storage folder).
    `writeback`: the file will be synced (fsync on store), so the kernel is
    asked to start writing each buffer to disk as soon as it is written
    (`storage.start_writeback`): the sync then waits for less.

    A BytesIO by type only (it stood in for pynetdicom's dataset buffer);
    every method used is answered from the file."""

    def __init__(self, head, folder=None, *, prefix=b"", place_at=None, writeback=False):
        super().__init__()
        self._map = None
        self.place_at = None
        self.guarded = False  # the disk guard has let through every byte written here (StoreSink)
        self.writeback = writeback
        fd = storage.nameless_file(place_at) if place_at is not None else None
        if fd is not None:
            self._file = open(fd, "r+b", buffering=0)
            self.place_at = place_at
        else:
            prefix = b""
            folder = folder or storage.storage_root()
            os.makedirs(folder, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=folder, buffering=0)
        self._fd = self._file.fileno()
        self.prefix = prefix
        self._buffer = bytearray(WRITE_BUFFER)
        self._view = memoryview(self._buffer)
        self._pending = 0  # bytes in the buffer, not yet in the file
        self._written = 0  # bytes in the file
        try:
            self.write(prefix)
            self.write(head)
        except BaseException:
            self.close()
            raise

    def write(self, data) -> int:
        size = len(data)
        if self._pending + size > WRITE_BUFFER:
            self._flush()
        if size >= WRITE_BUFFER:
            self._write(data)
        else:
            self._view[self._pending : self._pending + size] = data
            self._pending += size
        return size

    def _flush(self):
        if self._pending:
            pending, self._pending = self._pending, 0
            self._write(self._view[:pending])

    def _write(self, data):
        storage.write_chunks(self._fd, (data,))
        if self.writeback:
            storage.start_writeback(self._fd, self._written, len(data))
        self._written += len(data)

    def tell(self) -> int:
        """Data set bytes written so far."""
        return self._written + self._pending - len(self.prefix)

    def fileno(self) -> int:
        """The file's descriptor, everything written in it."""
        self._flush()
        return self._fd

    def region(self) -> storage.FileRegion:
        """The data set's bytes in the file, for `storage.write_chunks`."""
        return storage.FileRegion(self.fileno(), len(self.prefix), self.tell())

    def getbuffer(self) -> memoryview:
        """A read-only view of the data set written (release it before close())."""
        self._flush()
        if self._map is None:
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        whole = memoryview(self._map)
        try:
            return whole[len(self.prefix) :]
        finally:
            whole.release()  # the slice keeps the mapping exported until it is released

    def getvalue(self) -> bytes:  # as BytesIO's
        with self.getbuffer() as view:
            return bytes(view)

    def adopt(self, path, prefix) -> storage.Placed | None:
        """Link the spool under `path` as the instance's file, "keep the
        first" (`storage.place()`'s rule), when it is that file: a nameless
        file made for `path` that begins with `prefix`.  None when it is
        not (the caller then copies `region()`).  Raises StorageFull or
        OSError as `place()` does."""
        if self.place_at is None or path != self.place_at or prefix != self.prefix:
            return None
        fd = self.fileno()
        is_new = storage.link_nameless(fd, path)
        self.place_at = None  # linked (or refused for a kept file): once
        return storage.Placed(path, os.dup(fd), is_new)  # its own descriptor: close() closes ours

    def close(self) -> None:
        """Drops what is still buffered (a store that used the spool wrote it
        out first); the file goes with its last descriptor."""
        if self._map is not None:
            self._map.close()
            self._map = None
        self._pending = 0
        self._file.close()
        super().close()
