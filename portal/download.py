"""A study as a DICOM File-set (DICOMDIR) in a ZIP, streamed.

1. `dicomnodes.archive.fileset.plan_fileset()` reads each stored file's
   header (no pixels), fills the values the DICOMDIR records need, lets
   pydicom's FileSet lay out the File-set (PT000000/ST000000/...) and write
   the DICOMDIR; the disc folders of publishing come from the same plan.
2. `zip_chunks()` writes the ZIP (stored, not compressed: images barely
   compress and the CPU stays free) into a small buffer that is drained after
   every block: the archive is never held whole in memory, whatever its size.
   The stored files go into the ZIP byte for byte.
"""

import zipfile
from pathlib import Path

from dicomnodes.archive.fileset import FileSetPlan, plan_fileset

BLOCK = 256 * 1024


class _Drain:
    """A write-only file for zipfile whose content is taken out as it comes.
    It has no seek(), so zipfile writes sizes after each entry (data
    descriptors) instead of going back."""

    def __init__(self):
        self._parts = []
        self._position = 0

    def write(self, data):
        self._parts.append(bytes(data))
        self._position += len(data)
        return len(data)

    def tell(self):
        return self._position

    def flush(self):
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def zip_chunks(plan: FileSetPlan, *, folder=""):
    """The ZIP, in pieces of about BLOCK bytes."""
    prefix = f"{folder.strip('/')}/" if folder else ""
    sink = _Drain()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.writestr(_info(prefix + "DICOMDIR", len(plan.dicomdir)), plan.dicomdir)
        yield sink.take()
        for name, path in plan.files:
            with open(path, "rb") as source:
                size = Path(path).stat().st_size
                with archive.open(_info(prefix + name, size), "w", force_zip64=size >= 2**31) as entry:
                    while block := source.read(BLOCK):
                        entry.write(block)
                        if chunk := sink.take():
                            yield chunk
            if chunk := sink.take():
                yield chunk
    yield sink.take()


def _info(name, size):
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    info.external_attr = 0o644 << 16
    return info


def fileset_zip(instance_paths):
    """plan_fileset() then zip_chunks(), lazily: the header reading happens
    in whichever thread sends the response, not in the view.  A stored file
    that is gone or damaged is left out; the rest still goes out (the 200 is
    sent by then)."""
    yield from zip_chunks(plan_fileset(instance_paths, fileset_id="PACS", skip_unreadable=True))
