"""After a correction or a merge, everything that reads the files or the
index carries the new values: runscp's C-FIND (findscu) and C-MOVE
(movescu into DCMTK storescp), the patient link's ZIP and its DICOMDIR, and
a disc job's staged files; and runscp, whose index writer cached the old
patient rows, goes on storing (storescu)."""

import io
import zipfile
from pathlib import Path

import pydicom
import pytest
from django.urls import reverse
from pydicom.uid import generate_uid

from dicomnodes.lifecycle.corrections import correct_patient, merge_patients
from dicomnodes.models import Instance, Patient, Peer, Study
from portal.tokens import create_token
from publishing import tasks
from publishing.triggers import immediate_job
from tests.dicomnodes.test_runscp_find import run_findscu
from tests.dicomnodes.test_runscp_retrieve import move_destination
from tests.support.dicomdata import fresh_copy, make_ct_series
from tests.support.publishing import a_publisher, dicomdir_uids

pytestmark = [pytest.mark.archive, pytest.mark.filterwarnings("ignore:No directory at")]
VIEWER = "VIEWER1"
GREEK = "Παπαδόπουλος^Γιώργος"


@pytest.fixture
def a_viewer(shared_scp):
    """Persona: a viewer (VIEWER1) that may query and retrieve."""
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True, may_retrieve=True)
    shared_scp.wait_until_allowed(VIEWER, "move")
    return VIEWER


@pytest.fixture
def a_stored_study(shared_scp, tmp_path):
    """Doe^Jane (P1): three CT images and a JPEG baseline image in one study,
    sent with storescu; {SOP Instance UID: the file as sent}."""
    study = generate_uid()
    sent = make_ct_series(tmp_path / "ct", 3, study_uid=study, patient_id="P1", patient_name="Doe^Jane")
    assert shared_scp.store(tmp_path / "ct").returncode == 0
    jpeg = fresh_copy("SC_rgb_jpeg_dcmtk.dcm", tmp_path / "jpeg" / "sc.dcm", StudyInstanceUID=study, PatientID="P1")
    assert shared_scp.store(jpeg, options=["-xy"]).returncode == 0
    return {str(pydicom.dcmread(p).SOPInstanceUID): p for p in [*sent, jpeg]}


def find(scp, tmp_path, *keys, root="-S"):
    result, answers = run_findscu(scp, tmp_path, *keys, root=root)
    assert result.returncode == 0, result.stdout + result.stderr
    return answers


def test_after_a_greek_name_find_move_zip_and_disc_carry_it(shared_scp, a_stored_study, a_viewer, tmp_path, client):
    outcome = correct_patient(Patient.objects.get(patient_id="P1"), {"patient_name": GREEK}, actor="admin")
    assert outcome.files == 4

    # C-FIND answers the new name, and finds it by it.
    (answer,) = find(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=P1", "PatientName")
    assert (str(answer.PatientName), answer.SpecificCharacterSet) == (GREEK, "ISO_IR 192")
    by_name = find(
        shared_scp,
        tmp_path,
        "SpecificCharacterSet=ISO_IR 192",
        "QueryRetrieveLevel=PATIENT",
        "PatientName=Παπαδ*",
        "PatientID",
        root="-P",
    )
    assert [a.PatientID for a in by_name] == ["P1"]

    # C-MOVE delivers the new name with the same UIDs and pixel data as sent.
    study = Study.objects.get(patient_id="P1")
    with move_destination(shared_scp, tmp_path / "moved", "DEST", "+xa") as out:
        keys = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study.study_instance_uid}")
        result = shared_scp.qr("movescu", *keys, calling=VIEWER, options=["-aem", "DEST"])
        assert result.returncode == 0, result.stdout + result.stderr
        received = [pydicom.dcmread(p) for p in sorted(out.iterdir()) if p.is_file()]
    assert len(received) == 4
    for ds in received:
        sent = pydicom.dcmread(a_stored_study[str(ds.SOPInstanceUID)])
        assert (str(ds.PatientName), ds.SpecificCharacterSet) == (GREEK, "ISO_IR 192")
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPClassUID) == (
            sent.StudyInstanceUID,
            sent.SeriesInstanceUID,
            sent.SOPClassUID,
        )
        assert ds.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert ds.PixelData == sent.PixelData  # the JPEG one: its fragments as sent

    # The patient link's ZIP: its DICOMDIR and its files.
    response = client.get(reverse("portal:download", args=[study.pk]) + f"?{create_token(study).clear}")
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
    (patient,) = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"]
    assert str(patient.PatientName) == GREEK
    images = [n for n in archive.namelist() if n != "DICOMDIR"]
    assert len(images) == 4
    assert {str(pydicom.dcmread(io.BytesIO(archive.read(n))).PatientName) for n in images} == {GREEK}

    # A disc job: its staged files and their DICOMDIR.
    instances = list(Instance.objects.filter(series__study=study).select_related("series__study"))
    job = immediate_job("epson", instances, publisher=a_publisher("epson", tmp_path))
    assert tasks.submit(job.pk) == "submitted"
    disc = Path(job.discs.get().folder)
    assert dicomdir_uids(disc) == set(a_stored_study)
    on_disc = [p for p in (disc / "DICOM").rglob("*") if p.is_file()]
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).PatientName) for p in on_disc} == {GREEK}
    disc_dicomdir = pydicom.dcmread(disc / "DICOMDIR")
    assert {
        str(r.PatientName) for r in disc_dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "PATIENT"
    } == {GREEK}


def test_merge_moves_all_studies_the_old_patient_disappears_and_runscp_goes_on_storing(shared_scp, a_viewer, tmp_path):
    for folder, count, pid, name in (
        ("a1", 2, "A1", "Smith^Jon"),
        ("a2", 1, "A1", "Smith^Jon"),
        ("b", 1, "B1", "Smith^John"),
    ):
        make_ct_series(tmp_path / folder, count, patient_id=pid, patient_name=name)
    assert shared_scp.store(tmp_path / "a1", tmp_path / "a2", tmp_path / "b").returncode == 0
    a_study = pydicom.dcmread(next((tmp_path / "a1").iterdir())).StudyInstanceUID

    merge_patients(Patient.objects.get(patient_id="A1"), Patient.objects.get(patient_id="B1"), actor="admin")

    patients = find(
        shared_scp, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID", "NumberOfPatientRelatedStudies", root="-P"
    )
    assert [(a.PatientID, int(a.NumberOfPatientRelatedStudies)) for a in patients] == [("B1", 3)]
    assert find(shared_scp, tmp_path, "QueryRetrieveLevel=PATIENT", "PatientID=A1", root="-P") == []
    studies = find(shared_scp, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=B1", "PatientName", "StudyInstanceUID")
    assert len(studies) == 3 and {str(a.PatientName) for a in studies} == {"Smith^John"}

    # runscp's index writer still has A1's deleted row in its cache: a new
    # study of A1 fails its foreign key once, then is stored afresh.
    since = shared_scp.log_offset()
    make_ct_series(tmp_path / "late-a", 1, patient_id="A1", patient_name="Smith^Jon")
    make_ct_series(tmp_path / "late-b", 1, patient_id="B1", patient_name="Smith^John")
    make_ct_series(tmp_path / "late-moved", 1, patient_id="A1", patient_name="Smith^Jon", study_uid=a_study)
    for folder in ("late-a", "late-b", "late-moved"):
        assert shared_scp.store(tmp_path / folder).returncode == 0
    assert "retrying one by one" in shared_scp.log_since(since)
    counts = dict(Patient.objects.values_list("patient_id", "num_studies"))
    assert counts == {"A1": 1, "B1": 4}
    assert Study.objects.get(study_instance_uid=a_study).num_instances == 3
    assert Study.objects.get(study_instance_uid=a_study).patient_record.patient_id == "B1"


def test_runscp_stores_into_a_corrected_patient(shared_scp, a_stored_study, tmp_path):
    """The correction gave P1 a new row; runscp's cached old row fails its
    foreign key once and the new study joins the corrected patient."""
    correct_patient(Patient.objects.get(patient_id="P1"), {"patient_sex": "O"}, actor="admin")
    make_ct_series(tmp_path / "later", 2, patient_id="P1", patient_name="Doe^Jane")
    assert shared_scp.store(tmp_path / "later").returncode == 0
    (patient,) = Patient.objects.filter(patient_id="P1")
    assert (patient.patient_sex, patient.num_studies, patient.studies.count()) == ("O", 2, 2)
