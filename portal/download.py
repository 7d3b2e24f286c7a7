"""A study as a DICOM File-set (DICOMDIR) in a ZIP, streamed.

1. `plan_fileset()` reads each stored file's header (no pixels), lets
   pydicom's FileSet lay out the File-set (PT000000/ST000000/...) and write
   the DICOMDIR, and returns the DICOMDIR bytes plus (name in the ZIP, stored
   file) pairs.  Only header-only copies touch a temporary folder.
2. `zip_chunks()` writes the ZIP (stored, not compressed: images barely
   compress and the CPU stays free) into a small buffer that is drained after
   every block: the archive is never held whole in memory, whatever its size.
   The stored files go into the ZIP byte for byte.
"""

import logging
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet

logger = logging.getLogger(__name__)

BLOCK = 256 * 1024


@dataclass
class FileSetPlan:
    dicomdir: bytes
    files: list  # [(name in the ZIP, Path of the stored file)]


def plan_fileset(instance_paths, *, fileset_id="PACS") -> FileSetPlan:
    """The DICOMDIR and layout for the stored files `instance_paths`."""
    fs = FileSet()
    fs.ID = fileset_id
    source = {}
    for path in instance_paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            # The index names a file that is gone or damaged: the rest still goes out.
            logger.warning("download: %s left out (%s)", Path(path).name, exc)
            continue
        source[ds.SOPInstanceUID] = Path(path)
        fs.add(ds)
    with tempfile.TemporaryDirectory(prefix="fileset-") as folder:
        fs.write(folder)
        dicomdir = (Path(folder) / "DICOMDIR").read_bytes()
        files = [(instance.FileID.replace("\\", "/"), source[instance.SOPInstanceUID]) for instance in fs]
    return FileSetPlan(dicomdir, files)


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
    in whichever thread sends the response, not in the view."""
    yield from zip_chunks(plan_fileset(instance_paths))
