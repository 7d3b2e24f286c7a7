"""Helpers for the publishing tests: publishers with hot folders, instances
in the archive without a network, and checks of a disc folder."""

import re
from pathlib import Path

import pydicom
from pydicom.fileset import FileSet

from tests.support.archive import archive_files
from tests.support.processes import dcmtk


def a_publisher(kind, root: Path, **values):
    """Persona: a disc robot whose hot folder is a folder of the test."""
    from publishing.models import Publisher

    hot = root / f"{kind}-hot"
    hot.mkdir(parents=True, exist_ok=True)
    fields = dict(name=f"{kind} robot", kind=kind, is_default=True, job_folder=str(hot))
    if kind == "epson":
        fields["robot_name"] = "Publisher 0"
    fields.update(values)
    return Publisher.objects.create(**fields)


def index_files(paths, *, called_ae="PACS", association=None):
    """Put files into the archive as runscp would (file in storage, rows)."""
    return archive_files(paths, called_ae=called_ae, association=association)


def sop_uids(paths):
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def dicomdir_uids(disc_folder: Path):
    """The SOP Instance UIDs the DICOMDIR lists, after checking that each
    referenced file exists under DICOM/ with conformant File IDs and holds
    that instance, and that no DICOM file on the disc is unlisted."""
    disc_folder = Path(disc_folder)
    dicomdir = pydicom.dcmread(disc_folder / "DICOMDIR")
    listed = {}
    for record in dicomdir.DirectoryRecordSequence:
        if "ReferencedFileID" not in record:
            continue
        parts = list(record.ReferencedFileID)
        assert parts[0] == "DICOM", parts
        assert len(parts) <= 8 and all(re.fullmatch("[A-Z0-9_]{1,8}", p) for p in parts), parts
        path = disc_folder.joinpath(*parts)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPInstanceUID == record.ReferencedSOPInstanceUIDInFile
        listed[str(ds.SOPInstanceUID)] = path
    on_disc = {p for p in (disc_folder / "DICOM").rglob("*") if p.is_file()}
    assert on_disc == set(listed.values()), "a DICOM file on the disc is not in the DICOMDIR"
    assert {str(i.SOPInstanceUID) for i in FileSet(disc_folder / "DICOMDIR")} == set(listed)
    return set(listed)


def dcmdump_dicomdir(disc_folder: Path) -> str:
    proc = dcmtk("dcmdump", Path(disc_folder) / "DICOMDIR", check=True)
    assert "E:" not in proc.stdout + proc.stderr, proc.stderr
    return proc.stdout


def job_file_lines(path: Path):
    return path.read_bytes().decode("cp1252").split("\r\n")
