"""Corrections and merge without a network (dicomnodes/lifecycle/corrections.py
and rewrite.py): the stored files, the index rows and the audit events."""

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnodes.archive.storage import instance_path
from dicomnodes.lifecycle.corrections import CorrectionError, correct_patient, correct_study, merge_patients
from dicomnodes.lifecycle.rewrite import RewriteError, rewrite_file
from dicomnodes.models import DicomServerSettings, Instance, Patient, Study
from pacs_site.models import AuditEvent, AuditOutcome
from tests.support.archive import archive_files
from tests.support.dicomdata import TRANSFER_SYNTAX_CASES, fresh_copy, make_ct, make_ct_series

GREEK = "Παπαδόπουλος^Γιώργος"
pytestmark = pytest.mark.django_db


def stored(instance):
    return pydicom.dcmread(instance_path(instance.sop_instance_uid))


def snapshot(instances):
    return {i.sop_instance_uid: instance_path(i.sop_instance_uid).read_bytes() for i in instances}


@pytest.fixture
def a_patient(data_dir, tmp_path):
    """Doe^Jane (PAT001): a CT study of two images and a study of one JPEG image."""
    ct = archive_files(make_ct_series(tmp_path / "ct", 2))
    jpeg = fresh_copy(
        "SC_rgb_jpeg_dcmtk.dcm", tmp_path / "jpeg.dcm", PatientID="PAT001", PatientName="Doe^Jane", StudyDescription=""
    )
    instances = ct + archive_files([jpeg])
    return Patient.objects.get(patient_id="PAT001"), instances


def test_a_greek_name_goes_into_every_file_with_the_same_uids_and_pixel_bytes(a_patient):
    patient, instances = a_patient
    before = {i.sop_instance_uid: stored(i) for i in instances}
    outcome = correct_patient(patient, {"patient_name": GREEK, "patient_sex": "m"}, actor="admin", address="10.0.0.9")
    assert outcome.files == 3 and outcome.changes == {"patient_name": ["Doe^Jane", GREEK], "patient_sex": ["F", "M"]}
    for instance in instances:
        old, new = before[instance.sop_instance_uid], stored(instance)
        assert (str(new.PatientName), new.PatientSex, new.SpecificCharacterSet) == (GREEK, "M", "ISO_IR 192")
        for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "PatientBirthDate"):
            assert new[keyword].value == old[keyword].value
        assert new.file_meta.TransferSyntaxUID == old.file_meta.TransferSyntaxUID
        assert new.PixelData == old.PixelData  # as stored: for JPEG the encapsulated fragments
        instance.refresh_from_db()
        assert instance.file_size == instance_path(instance.sop_instance_uid).stat().st_size
    row = Patient.objects.get(patient_id="PAT001")
    assert (row.patient_name, row.patient_name_upper, row.patient_sex, row.num_studies) == (
        GREEK,
        GREEK.upper(),
        "M",
        2,
    )
    assert not Patient.objects.filter(pk=patient.pk).exists(), "a corrected patient gets a new row"
    for study in Study.objects.all():
        assert (study.patient_record_id, study.patient_name, study.patient_name_upper) == (row.pk, GREEK, GREEK.upper())
        assert study.specific_character_set == "ISO_IR 192"
    (event,) = AuditEvent.objects.filter(action="correct")
    assert (event.actor, event.actor_kind, event.address, event.patient_id) == ("admin", "user", "10.0.0.9", "PAT001")
    assert event.details["changes"] == {"patient_name": ["Doe^Jane", GREEK], "patient_sex": ["F", "M"]}
    assert event.details["files"] == 3 and event.outcome == AuditOutcome.SUCCESS


@pytest.mark.parametrize(("name", "syntax", "options"), TRANSFER_SYNTAX_CASES)
def test_every_transfer_syntax_keeps_its_syntax_and_pixel_data(tmp_path, name, syntax, options):
    path = fresh_copy(name, tmp_path / name)
    old = pydicom.dcmread(path)
    result = rewrite_file(path, {"PatientName": GREEK, "AccessionNumber": "A9"}, fsync=False, max_inflated=2**30)
    new = pydicom.dcmread(path)
    assert new.file_meta.TransferSyntaxUID == syntax == old.file_meta.TransferSyntaxUID
    assert (str(new.PatientName), new.AccessionNumber, new.SpecificCharacterSet) == (GREEK, "A9", "ISO_IR 192")
    assert new.SOPInstanceUID == old.SOPInstanceUID and new.PixelData == old.PixelData
    assert result.size == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == [name], "no temporary left"


def test_the_other_text_of_the_file_is_converted_to_utf8(tmp_path):
    path = make_ct(tmp_path / "g.dcm", patient_name="Παπαδόπουλος^Νίκος", charset="ISO_IR 126")
    ds = pydicom.dcmread(path)
    ds.StudyDescription = "Θώρακας"
    code = Dataset()
    code.CodeMeaning = "Ακτινογραφία θώρακα"
    ds.ProcedureCodeSequence = [code]
    ds.save_as(path)
    assert "Θώρακας".encode("iso8859_7") in path.read_bytes()
    rewrite_file(path, {"PatientName": "Иванов^Иван"}, fsync=False, max_inflated=2**30)
    new = pydicom.dcmread(path)
    assert new.SpecificCharacterSet == "ISO_IR 192"
    assert (str(new.PatientName), new.StudyDescription) == ("Иванов^Иван", "Θώρακας")
    assert new.ProcedureCodeSequence[0].CodeMeaning == "Ακτινογραφία θώρακα"
    assert "Θώρακας".encode() in path.read_bytes()


def test_an_ascii_value_keeps_the_character_set_and_the_other_bytes(tmp_path):
    path = make_ct(tmp_path / "m.dcm", patient_name="Müller^Jürgen", charset="ISO_IR 100")
    old = path.read_bytes()
    rewrite_file(path, {"AccessionNumber": "ACC999"}, fsync=False, max_inflated=2**30)
    new = pydicom.dcmread(path)
    assert (new.SpecificCharacterSet, str(new.PatientName), new.AccessionNumber) == (
        "ISO_IR 100",
        "Müller^Jürgen",
        "ACC999",
    )
    assert len(path.read_bytes()) == len(old)  # ACC001 -> ACC999: same length, one value changed
    assert sum(a != b for a, b in zip(old, path.read_bytes())) == 3


def test_a_deflated_file_that_inflates_beyond_the_bound_is_refused_and_left_alone(tmp_path):
    path = fresh_copy("image_dfl.dcm", tmp_path / "d.dcm")
    old = path.read_bytes()
    with pytest.raises(RewriteError, match="inflates beyond"):
        rewrite_file(path, {"PatientName": "X"}, fsync=False, max_inflated=1000)
    assert path.read_bytes() == old


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"patient_name": "A^B^C^D^E^F"}, "patient_name"),
        ({"patient_name": "a=b=c=d"}, "patient_name"),
        ({"patient_name": "x" * 65}, "patient_name"),
        ({"patient_id": "x" * 65}, "patient_id"),
        ({"patient_id": "A\\B"}, "patient_id"),
        ({"patient_id": ""}, "patient_id"),
        ({"patient_birth_date": "19701301"}, "patient_birth_date"),
        ({"patient_birth_date": "1970"}, "patient_birth_date"),
        ({"patient_sex": "X"}, "patient_sex"),
        ({"patient_name": "tab\there"}, "patient_name"),
        ({"study_description": "nope"}, "study_description"),
    ],
)
def test_bad_values_are_refused_before_anything_changes(a_patient, data, field):
    patient, instances = a_patient
    files = snapshot(instances)
    with pytest.raises(CorrectionError) as refused:
        correct_patient(patient, data, actor="admin")
    assert list(refused.value.errors) == [field]
    assert snapshot(instances) == files
    assert Patient.objects.get(pk=patient.pk).patient_name == "Doe^Jane"


def test_study_values_are_checked_as_sh_lo_and_pn(a_patient):
    study = a_patient[1][0].series.study
    with pytest.raises(CorrectionError) as refused:
        correct_study(study, {"accession_number": "x" * 17, "study_description": "y" * 65}, actor="admin")
    assert set(refused.value.errors) == {"accession_number", "study_description"}


def test_a_study_correction_changes_that_study_only(a_patient):
    patient, instances = a_patient
    study = instances[0].series.study
    outcome = correct_study(
        study,
        {"study_description": "CT THORAX", "accession_number": "ACC777", "referring_physician_name": "Who^Doctor"},
        actor="admin",
    )
    assert outcome.files == 2
    study.refresh_from_db()
    assert (study.study_description, study.accession_number, study.referring_physician_name_upper) == (
        "CT THORAX",
        "ACC777",
        "WHO^DOCTOR",
    )
    for instance in instances[:2]:
        ds = stored(instance)
        assert (ds.StudyDescription, ds.AccessionNumber, str(ds.ReferringPhysicianName)) == (
            "CT THORAX",
            "ACC777",
            "Who^Doctor",
        )
    assert stored(instances[2]).AccessionNumber != "ACC777"
    assert Patient.objects.filter(pk=patient.pk).exists(), "a study correction leaves the patient row alone"
    (event,) = AuditEvent.objects.filter(action="correct")
    assert event.study_instance_uid == study.study_instance_uid
    assert event.details["changes"]["accession_number"] == ["ACC001", "ACC777"]


def test_a_new_patient_id_that_another_patient_has_is_refused_as_a_merge(a_patient, tmp_path):
    patient, instances = a_patient
    archive_files(make_ct_series(tmp_path / "other", 1, patient_id="PAT002", patient_name="Roe^Richard"))
    files = snapshot(instances)
    with pytest.raises(CorrectionError) as refused:
        correct_patient(patient, {"patient_id": "PAT002"}, actor="admin")
    assert "merge" in refused.value.errors["patient_id"][0]
    assert snapshot(instances) == files


def test_nothing_to_change_is_refused(a_patient):
    with pytest.raises(CorrectionError, match="Nothing to change"):
        correct_patient(a_patient[0], {"patient_name": "Doe^Jane"}, actor="admin")


def test_a_new_patient_id_keeps_the_issuer(data_dir, tmp_path):
    archive_files(make_ct_series(tmp_path / "a", 1))
    patient = Patient.objects.get()
    Patient.objects.filter(pk=patient.pk).update(issuer_of_patient_id="HOSP")
    (instance,) = Instance.objects.all()
    ds = stored(instance)
    ds.IssuerOfPatientID = "HOSP"
    ds.save_as(instance_path(instance.sop_instance_uid))
    correct_patient(Patient.objects.get(), {"patient_id": "NEW42"}, actor="admin")
    assert (stored(instance).PatientID, stored(instance).IssuerOfPatientID) == ("NEW42", "HOSP")
    assert Patient.objects.get().issuer_of_patient_id == "HOSP"
    assert Study.objects.get().patient_id == "NEW42"


def test_merge_moves_every_study_and_the_old_patient_disappears(data_dir, tmp_path):
    a = archive_files(
        make_ct_series(tmp_path / "a1", 2, patient_id="A1", patient_name="Smith^Jon")
        + make_ct_series(tmp_path / "a2", 1, patient_id="A1", patient_name="Smith^Jon")
    )
    b = archive_files(make_ct_series(tmp_path / "b", 1, patient_id="B1", patient_name="Smith^John"))
    source, target = Patient.objects.get(patient_id="A1"), Patient.objects.get(patient_id="B1")
    Patient.objects.filter(pk=source.pk).update(protected=True)
    source.refresh_from_db()
    outcome = merge_patients(source, target, actor="admin")
    assert outcome.files == 3
    assert not Patient.objects.filter(patient_id="A1").exists()
    target.refresh_from_db()
    assert (target.num_studies, target.protected) == (3, True)
    assert set(Study.objects.values_list("patient_record_id", "patient_id", "patient_name")) == {
        (target.pk, "B1", "Smith^John")
    }
    for instance in a + b:
        ds = stored(instance)
        assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == (
            "B1",
            "Smith^John",
            "19700101",
            "F",
        )
    (event,) = AuditEvent.objects.filter(action="merge")
    assert event.patient_id == "B1" and event.details["changes"]["patient_id"] == ["A1", "B1"]
    assert len(event.details["studies"]) == 2


def test_a_file_that_cannot_be_rewritten_stops_the_work_and_the_index_keeps_the_old_values(a_patient):
    patient, instances = a_patient
    instance_path(instances[1].sop_instance_uid).write_bytes(b"not DICOM at all" * 20)
    with pytest.raises(CorrectionError, match="correct again"):
        correct_patient(patient, {"patient_name": "New^Name"}, actor="admin")
    assert Patient.objects.get(pk=patient.pk).patient_name == "Doe^Jane"
    (event,) = AuditEvent.objects.filter(action="correct")
    assert event.outcome == AuditOutcome.SERIOUS_FAILURE and "correct again" in event.details["error"]


def test_a_row_without_its_file_is_counted_and_skipped(a_patient):
    patient, instances = a_patient
    instance_path(instances[0].sop_instance_uid).unlink()
    outcome = correct_patient(patient, {"patient_birth_date": "1971-02-03"}, actor="admin")
    assert (outcome.files, outcome.missing) == (2, 1)
    assert stored(instances[1]).PatientBirthDate == "19710203"


def test_fsync_follows_the_server_setting(a_patient, monkeypatch):
    """The rewrite flushes exactly when DicomServerSettings.fsync_on_store says so."""
    import os

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd) or real(fd))
    row = DicomServerSettings.load()
    row.fsync_on_store = False
    row.save()
    correct_patient(a_patient[0], {"patient_name": "A^B"}, actor="admin")
    assert calls == []
    row.fsync_on_store = True
    row.save()
    correct_patient(Patient.objects.get(), {"patient_name": "C^D"}, actor="admin")
    assert len(calls) >= 3


def test_uids_are_never_among_the_values(a_patient):
    with pytest.raises(CorrectionError) as refused:
        correct_patient(a_patient[0], {"study_instance_uid": generate_uid()}, actor="admin")
    assert list(refused.value.errors) == ["study_instance_uid"]


def test_a_big_file_is_rewritten_without_its_pixel_data_in_memory(tmp_path):
    """The pixel data goes from the old file to the new one in the kernel
    (copy_file_range): Python allocates a few kB, not the 32 MB image."""
    import tracemalloc

    path = make_ct(tmp_path / "big.dcm", size=8)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 4096
    ds.PixelData = b"\x01\x02" * (4096 * 4096)
    ds.save_as(path)
    del ds
    tracemalloc.start()
    try:
        rewrite_file(path, {"PatientName": GREEK}, fsync=False, max_inflated=2**30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
    new = pydicom.dcmread(path, stop_before_pixels=True)
    assert str(new.PatientName) == GREEK
    assert pydicom.dcmread(path).PixelData == b"\x01\x02" * (4096 * 4096)
