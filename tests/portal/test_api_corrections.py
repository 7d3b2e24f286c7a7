"""Corrections and merge over the API (portal/api/corrections.py): the
permission each needs, 400 with the messages per field, and the stored files
and index rows afterwards."""

import pydicom
import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Patient, Study
from pacs_site.models import AuditEvent
from tests.support.api import archived

GREEK = "Παπαδόπουλος^Γιώργος"


@pytest.fixture
def two_patients(db, data_dir, tmp_path):
    """Doe^Jane (P1) with two studies, Doe^J (P9) with one: one instance each."""
    return {
        "jane": [archived(tmp_path, patient_id="P1", patient_name="Doe^Jane", accession=f"A{n}") for n in (1, 2)],
        "duplicate": archived(tmp_path, patient_id="P9", patient_name="Doe^J", accession="A9"),
    }


@pytest.fixture
def a_study_editor(django_user_model):
    """Staff who may view everything and change studies, not patients."""
    user = django_user_model.objects.create_user("editor", password=None, is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__startswith="view_") | Permission.objects.filter(codename="change_study")
    )
    client = APIClient()
    client.force_login(user)
    return client


def stored(instance):
    return pydicom.dcmread(instance_path(instance.sop_instance_uid))


def study_of(instance):
    return instance.series.study_id


def test_a_study_is_corrected_with_the_change_permission(a_study_editor, two_patients):
    instance = two_patients["jane"][0]
    response = a_study_editor.post(
        f"/api/studies/{study_of(instance)}/correct/",
        {"study_description": "CT THORAX", "accession_number": "A100"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["changes"] == {
        "study_description": ["CT CHEST", "CT THORAX"],
        "accession_number": ["A1", "A100"],
    }
    assert response.json()["files"] == 1
    assert (stored(instance).StudyDescription, stored(instance).AccessionNumber) == ("CT THORAX", "A100")
    assert Study.objects.get(pk=study_of(instance)).accession_number == "A100"
    assert AuditEvent.objects.get(action="correct").actor == "editor"


def test_correcting_a_patient_needs_change_patient(a_study_editor, two_patients):
    instance = two_patients["jane"][0]
    response = a_study_editor.post(
        f"/api/studies/{study_of(instance)}/correct-patient/", {"patient_name": GREEK}, format="json"
    )
    assert response.status_code == 403
    assert str(stored(instance).PatientName) == "Doe^Jane"


def test_a_reader_may_correct_nothing(a_reader, two_patients):
    instance = two_patients["jane"][0]
    assert a_reader.post(f"/api/studies/{study_of(instance)}/correct/", {"accession_number": "Z"}).status_code == 403
    merge = {"from_patient_id": "P9", "into_patient_id": "P1"}
    assert a_reader.post("/api/patients/merge/", merge, format="json").status_code == 403
    assert Patient.objects.count() == 2


def test_a_patient_is_corrected_in_every_study(an_api_admin, two_patients):
    first, second = two_patients["jane"]
    response = an_api_admin.post(
        f"/api/studies/{study_of(first)}/correct-patient/",
        {"patient_name": GREEK, "patient_birth_date": "1980-05-06"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["files"] == 2 and response.json()["patient_id"] == "P1"
    for instance in (first, second):
        assert (str(stored(instance).PatientName), stored(instance).PatientBirthDate) == (GREEK, "19800506")
    listed = an_api_admin.get("/api/studies/", {"patient_id": "P1"}).json()["results"]
    assert {s["patient_name"] for s in listed} == {GREEK}
    assert {s["patient_birth_date"] for s in listed} == {"19800506"}


def test_bad_values_are_a_400_with_a_message_per_field(an_api_admin, two_patients):
    instance = two_patients["jane"][0]
    before = instance_path(instance.sop_instance_uid).read_bytes()
    response = an_api_admin.post(
        f"/api/studies/{study_of(instance)}/correct-patient/",
        {"patient_sex": "Q", "patient_birth_date": "19801350", "patient_name": "A^B^C^D^E^F", "study_date": "x"},
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"patient_sex", "patient_birth_date", "patient_name", "study_date"}
    response = an_api_admin.post(
        f"/api/studies/{study_of(instance)}/correct/", {"accession_number": "12345678901234567"}, format="json"
    )
    assert response.status_code == 400 and "16" in response.json()["accession_number"][0]
    assert instance_path(instance.sop_instance_uid).read_bytes() == before


def test_an_id_another_patient_has_is_a_400_pointing_to_merge(an_api_admin, two_patients):
    instance = two_patients["jane"][0]
    response = an_api_admin.post(
        f"/api/studies/{study_of(instance)}/correct-patient/", {"patient_id": "P9"}, format="json"
    )
    assert response.status_code == 400
    assert "merge" in response.json()["patient_id"][0]


def test_merge_moves_the_studies_and_the_old_patient_goes(an_api_admin, two_patients):
    merge = {"from_patient_id": "P9", "into_patient_id": "P1"}
    response = an_api_admin.post("/api/patients/merge/", merge, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["changes"]["patient_id"] == ["P9", "P1"]
    assert not Patient.objects.filter(patient_id="P9").exists()
    assert Patient.objects.get(patient_id="P1").num_studies == 3
    moved = two_patients["duplicate"]
    assert (stored(moved).PatientID, str(stored(moved).PatientName)) == ("P1", "Doe^Jane")
    assert AuditEvent.objects.get(action="merge").details["changes"]["patient_name"] == ["Doe^J", "Doe^Jane"]


def test_merge_names_the_patient_it_does_not_know(an_api_admin, two_patients):
    response = an_api_admin.post(
        "/api/patients/merge/", {"from_patient_id": "P9", "into_patient_id": "NOPE"}, format="json"
    )
    assert response.status_code == 400 and list(response.json()) == ["into_patient_id"]
    response = an_api_admin.post(
        "/api/patients/merge/", {"from_patient_id": "P1", "into_patient_id": "P1"}, format="json"
    )
    assert response.status_code == 400 and "itself" in response.json()["detail"]
