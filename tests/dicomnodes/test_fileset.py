"""The one File-set builder (dicomnodes/archive/fileset.py) and its two users:
the ZIP download of a patient link (portal) and the disc folder of a burn job
(publishing), with a study whose values the DICOMDIR records need are empty.

Personas: a patient with a token, a disc robot.
"""

import io
import logging
import zipfile
from pathlib import Path

import pydicom
import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from dicomnodes.archive.fileset import FileSetError, plan_fileset
from dicomnodes.models import AssociationLog, AssociationResult, Instance
from portal.tokens import create_token
from publishing import tasks
from publishing.models import BurnJob, JobState
from publishing.triggers import on_association_closed
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.publishing import a_publisher, dcmdump_dicomdir, dicomdir_uids, sop_uids

pytestmark = [pytest.mark.archive, pytest.mark.filterwarnings("ignore:No directory at")]

# Type 1 in the DICOMDIR records (PS3.3 F.5) or Type 2 in the instance, all empty here.
EMPTIED = ("PatientID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "SeriesNumber", "InstanceNumber")


def files_with_empty_values(folder: Path, *, series=2, per_series=2):
    """A CT study whose Patient ID, Study Date and Time, Study ID, Accession
    Number, Series Numbers and Instance Numbers are present but empty."""
    study_uid = generate_uid()
    paths = []
    for number in range(1, series + 1):
        for path in make_ct_series(folder / f"series-{number}", per_series, study_uid=study_uid, size=8):
            ds = pydicom.dcmread(path)
            for keyword in EMPTIED:
                setattr(ds, keyword, None)
            ds.save_as(path)
            paths.append(path)
    return paths


def records(dicomdir, kind):
    return [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == kind]


# --- The builder ---------------------------------------------------------------------


def test_the_plan_names_every_stored_file_as_its_dicomdir_record_does(tmp_path):
    files = make_ct_series(tmp_path / "a", 2) + make_ct_series(tmp_path / "b", 1, patient_id="PAT002")

    plan = plan_fileset(files, fileset_id="PACS00001_1")

    dicomdir = pydicom.dcmread(io.BytesIO(plan.dicomdir))
    assert dicomdir.FileSetID == "PACS00001_1"
    by_name = {"/".join(r.ReferencedFileID): r.ReferencedSOPInstanceUIDInFile for r in records(dicomdir, "IMAGE")}
    assert sorted(by_name) == sorted(name for name, _ in plan.files)
    assert sorted(by_name) == [
        "PT000000/ST000000/SE000000/IM000000",
        "PT000000/ST000000/SE000000/IM000001",
        "PT000001/ST000000/SE000000/IM000000",
    ]
    for name, stored in plan.files:
        assert pydicom.dcmread(stored).SOPInstanceUID == by_name[name]


def test_a_folder_is_the_first_component_of_every_file_id(tmp_path):
    files = make_ct_series(tmp_path, 2)

    plan = plan_fileset(files, fileset_id="X", folder="DICOM")

    assert all(name.startswith("DICOM/PT000000/ST000000/SE000000/IM") for name, _ in plan.files)
    dicomdir = pydicom.dcmread(io.BytesIO(plan.dicomdir))
    assert sorted("/".join(r.ReferencedFileID) for r in records(dicomdir, "IMAGE")) == sorted(n for n, _ in plan.files)


def test_empty_values_are_invented_in_the_records_and_the_stored_files_stay_as_they_are(tmp_path):
    files = files_with_empty_values(tmp_path, series=1, per_series=2)
    before = [f.read_bytes() for f in files]

    plan = plan_fileset(files, fileset_id="X", fallback_date="20261203")

    dicomdir = pydicom.dcmread(io.BytesIO(plan.dicomdir))
    (patient,), (study,), (series,) = (
        records(dicomdir, "PATIENT"),
        records(dicomdir, "STUDY"),
        records(dicomdir, "SERIES"),
    )
    assert patient.PatientID == "UNKNOWN"
    assert (study.StudyDate, study.StudyTime, study.StudyID) == ("20261203", "000000", "1")
    assert series.SeriesNumber == 1
    assert sorted(r.InstanceNumber for r in records(dicomdir, "IMAGE")) == [1, 2]  # their place in the list
    assert [f.read_bytes() for f in files] == before


def test_a_missing_study_date_is_taken_from_the_series_date_before_the_fallback(tmp_path):
    source = make_ct(tmp_path / "ct.dcm")
    ds = pydicom.dcmread(source)
    ds.StudyDate, ds.SeriesDate, ds.SeriesTime = "", "20250102", "080910"
    ds.save_as(source)

    dicomdir = pydicom.dcmread(io.BytesIO(plan_fileset([source], fileset_id="X", fallback_date="19000101").dicomdir))

    (study,) = records(dicomdir, "STUDY")
    assert (study.StudyDate, study.StudyTime) == ("20250102", "101500")  # the instance's own Study Time is kept


def test_an_unreadable_file_is_an_error_that_names_it(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")

    with pytest.raises(FileSetError, match="bad.dcm cannot go into the DICOMDIR"):
        plan_fileset(make_ct_series(tmp_path / "ok", 1) + [bad], fileset_id="X")


def test_skipping_unreadable_files_leaves_them_out_with_a_warning(tmp_path, caplog):
    good = make_ct_series(tmp_path / "ok", 2)
    gone = tmp_path / "gone.dcm"

    with caplog.at_level(logging.WARNING, logger="dicomnodes.archive.fileset"):
        plan = plan_fileset([good[0], gone, good[1]], fileset_id="X", skip_unreadable=True)

    assert sorted(stored for _, stored in plan.files) == sorted(good)
    assert "gone.dcm left out" in caplog.text


# --- Its users: the ZIP of a patient link, the disc of a burn job -----------------------


@pytest.fixture
def a_patient_with_a_token_to_empty_values(client, db, data_dir, tmp_path):
    """(client, clear token, study) for the study with empty values."""
    cache.clear()  # the token pages' rate limit
    instances = archive_files(files_with_empty_values(tmp_path / "made"))
    study = instances[0].series.study
    yield client, create_token(study).clear, study
    cache.clear()


def test_the_zip_of_a_study_with_empty_values_is_complete(a_patient_with_a_token_to_empty_values, tmp_path):
    client, token, study = a_patient_with_a_token_to_empty_values

    response = client.get(reverse("portal:download", args=[study.pk]) + f"?{token}")
    assert response.status_code == 200
    body = b"".join(response.streaming_content)  # the old builder raised ValueError here, mid-stream

    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    stored = {i.sop_instance_uid: i.path for i in Instance.objects.filter(series__study=study)}
    assert len(stored) == 4 and len(archive.namelist()) == 1 + 4
    archive.extractall(tmp_path / "unzipped")
    fileset = FileSet(pydicom.dcmread(tmp_path / "unzipped" / "DICOMDIR"))
    listed = {str(instance.SOPInstanceUID): Path(instance.path) for instance in fileset}
    assert set(listed) == set(stored)
    for uid, path in listed.items():
        assert path.read_bytes() == stored[uid].read_bytes()


def test_the_disc_of_a_study_with_empty_values_is_staged_with_a_valid_dicomdir(db, data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    files = files_with_empty_values(tmp_path / "made")
    now = timezone.now()
    association = AssociationLog.objects.create(
        started_at=now,
        ended_at=now,
        calling_ae="MODALITY1",
        called_ae="PACS_E",
        instances_received=len(files),
        result=AssociationResult.RELEASED,
    )
    archive_files(files, called_ae="PACS_E", association=association)
    (pk,) = on_association_closed(AssociationLog, association=association)

    assert tasks.submit(pk) == "submitted"

    job = BurnJob.objects.get(pk=pk)
    assert job.state == JobState.SUBMITTED
    (disc,) = job.discs.all()
    assert dicomdir_uids(disc.folder) == sop_uids(files)
    dump = dcmdump_dicomdir(disc.folder)
    assert dump.count("ReferencedSOPInstanceUIDInFile") == 4
    assert "UNKNOWN" in dump  # the invented Patient ID of the PATIENT record
