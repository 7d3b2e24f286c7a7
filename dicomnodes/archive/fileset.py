"""Stored instances as a DICOM File-set (PS3.10): the DICOMDIR and where
each stored file goes in it.  The ZIP download (`portal.download`) and the
disc folder (`publishing.discs`) both take their File-set from here.

Only header-only copies (no pixels) go through pydicom, in a temporary
folder; the caller puts the stored files themselves, byte for byte, under
the names the plan gives.  Names come from pydicom's generated File IDs
(PT000000/ST000000/SE000000/IM000000), never from a dataset value.
"""

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom
from django.utils import timezone
from pydicom.fileset import FileSet

logger = logging.getLogger(__name__)


class FileSetError(ValueError):
    """A stored file cannot go into the File-set (unreadable, or a record
    pydicom cannot make from it)."""


@dataclass
class FileSetPlan:
    dicomdir: bytes
    files: list  # [(name in the File-set, "/"-separated; Path of the stored file)]


def plan_fileset(
    instance_paths, *, fileset_id: str, folder: str = "", fallback_date=None, skip_unreadable=False
) -> FileSetPlan:
    """The DICOMDIR and layout of the stored files `instance_paths`.

    1. each file's header is read (no pixels) and the values the DICOMDIR
       records need but the instance lacks are filled in that copy only;
       a file that cannot be read or recorded is an error, or with
       `skip_unreadable` left out with a warning (the rest still goes out);
    2. pydicom's FileSet lays out the File-set and writes it to a temporary
       folder, under `folder` (the IHE PDI "DICOM") when one is given;
    3. with a `folder`, the DICOMDIR moves to the root and its File IDs get
       that component; FileSet re-encodes it (offsets) keeping that layout.
    `fallback_date` (YYYYMMDD, today by default) stands in for a missing
    Study Date that no other date of the instance can replace.
    """
    fallback_date = fallback_date or timezone.localdate().strftime("%Y%m%d")
    fs = FileSet()
    fs.ID = fileset_id
    source = {}
    for counter, path in enumerate(instance_paths, start=1):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            _invent_missing(ds, fallback_date=fallback_date, instance_counter=counter)
            uid = ds.SOPInstanceUID
            fs.add(ds)
        except Exception as exc:  # unreadable or gone, a record pydicom cannot make
            if not skip_unreadable:
                raise FileSetError(f"stored file {Path(path).name} cannot go into the DICOMDIR: {exc}") from exc
            logger.warning("fileset: %s left out (%s)", Path(path).name, exc)
            continue
        source[uid] = Path(path)
    with tempfile.TemporaryDirectory(prefix="fileset-") as temporary:
        root = Path(temporary)
        fs.write(root / folder)
        files = [
            (PurePosixPath(folder, *Path(instance.FileID).parts).as_posix(), source[instance.SOPInstanceUID])
            for instance in fs
        ]
        if folder:
            os.replace(root / folder / "DICOMDIR", root / "DICOMDIR")
            _relocate(root / "DICOMDIR", folder)
        dicomdir = (root / "DICOMDIR").read_bytes()
    return FileSetPlan(dicomdir, files)


def _invent_missing(ds, *, fallback_date, instance_counter):
    """Values the DICOMDIR records need (PS3.3 F.5, Type 1) that the instance
    lacks, as DCMTK's dcmgpdir +I does.  Only the header copy used for the
    records changes; the file in the File-set is the one we stored."""
    defaults = {
        "PatientID": "UNKNOWN",
        "StudyDate": ds.get("SeriesDate") or ds.get("ContentDate") or fallback_date,
        "StudyTime": ds.get("SeriesTime") or ds.get("ContentTime") or "000000",
        "StudyID": "1",
        "Modality": "OT",
        "SeriesNumber": "1",
        "InstanceNumber": str(instance_counter),
    }
    for keyword, value in defaults.items():
        if keyword not in ds or ds[keyword].VM == 0:
            setattr(ds, keyword, value)


def _relocate(dicomdir_path: Path, folder: str):
    """The DICOMDIR at `dicomdir_path` with its File IDs under `folder`,
    written again in place (the File IDs grow, so the record offsets change)."""
    dicomdir = pydicom.dcmread(dicomdir_path)
    for record in dicomdir.DirectoryRecordSequence:
        if "ReferencedFileID" in record and record["ReferencedFileID"].VM:
            value = record.ReferencedFileID
            parts = [value] if isinstance(value, str) else list(value)
            record.ReferencedFileID = [folder, *parts]
    FileSet(dicomdir).write(use_existing=True)
