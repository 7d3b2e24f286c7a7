"""A received dataset too big for memory: kept in a file while it arrives.

runscp gathers a C-STORE's dataset in memory (`scp/sinks.StoreSink`), and
STOW-RS a part (`portal/dicomweb/upload.py`).  Once one passes `SPILL_AT`,
it moves into a `SpoolFile` (an anonymous temporary file in the storage
folder, so on the disk the instance goes to), and the rest of the fragments
are written there as they come.  A runscp therefore holds at most `SPILL_AT` bytes per
association of any dataset, whatever its size; the file vanishes when it is
closed, or when the process ends.

`getbuffer()` answers as BytesIO's does, with a read-only view of the file
(mmap): the store path reads element headers and UIDs from it and copies
the rest file to file, so its pages are only ever touched by the kernel.
"""

import io
import mmap
import tempfile

from dicomnodes.archive.storage import storage_root

# Datasets above this are spooled to disk while they arrive (4 MiB: every
# CT, MR and CR instance stays in memory; multi-frame series and
# mammography tomosynthesis go to disk).
SPILL_AT = 4 * 2**20


class SpoolFile(io.BytesIO):
    """Write-only while the dataset arrives; then `getbuffer()` and `fileno()`.

    A BytesIO by type only (it stood in for pynetdicom's dataset buffer);
    every method used is answered from the file."""

    def __init__(self, head: bytes, folder=None):
        super().__init__()
        folder = folder or storage_root()
        folder.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder)
        self._file.write(head)
        self._map = None

    def write(self, data) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def fileno(self) -> int:
        self._file.flush()
        return self._file.fileno()

    def getbuffer(self) -> memoryview:
        """A read-only view of everything written (release it before close())."""
        self._file.flush()
        if self._map is None:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return memoryview(self._map)

    def getvalue(self) -> bytes:  # as BytesIO's
        with self.getbuffer() as view:
            return bytes(view)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()
        super().close()
