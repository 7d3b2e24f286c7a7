"""The admin's "Correct…" pages and "Merge into another patient…" (Django
test client; the pages in Chromium are another test file's).

Personas: an admin (a superuser), a viewer (staff who may only view)."""

import pydicom
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Patient, Study
from pacs_site.models import AuditEvent
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct_series

pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore:No directory at")]
GREEK = "Παπαδόπουλος^Γιώργος"


@pytest.fixture
def two_patients(data_dir, tmp_path):
    """Doe^Jane (PAT001) with a study of two images; Doe^J (PAT009) with one of one image."""
    jane = archive_files(make_ct_series(tmp_path / "jane", 2))
    duplicate = archive_files(make_ct_series(tmp_path / "dup", 1, patient_id="PAT009", patient_name="Doe^J"))
    return Patient.objects.get(patient_id="PAT001"), Patient.objects.get(patient_id="PAT009"), jane + duplicate


@pytest.fixture
def a_viewer(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password=None, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client.force_login(user)
    return client


def correct_url(obj):
    return reverse(f"admin:dicomnodes_{obj._meta.model_name}_correct", args=[obj.pk])


def merge_url(patient):
    return reverse("admin:dicomnodes_patient_merge", args=[patient.pk])


def patient_form(patient, **changes):
    data = {
        name: getattr(patient, name) for name in ("patient_name", "patient_id", "patient_birth_date", "patient_sex")
    }
    data.update(changes)
    return data


def test_the_patient_page_links_to_correct_and_merge(an_admin, two_patients):
    jane = two_patients[0]
    page = an_admin.get(reverse("admin:dicomnodes_patient_change", args=[jane.pk])).content.decode()
    assert correct_url(jane) in page and merge_url(jane) in page


def test_the_form_shows_the_current_values_and_the_confirmation_old_and_new(an_admin, two_patients):
    jane = two_patients[0]
    form = an_admin.get(correct_url(jane)).content.decode()
    assert 'value="Doe^Jane"' in form and 'value="19700101"' in form
    review = an_admin.post(correct_url(jane), {**patient_form(jane, patient_name=GREEK), "preview": "1"})
    page = review.content.decode()
    assert review.status_code == 200
    assert '<td class="old">Doe^Jane</td>' in page and f'<td class="new">{GREEK}</td>' in page
    assert "2 stored files of 1 study will be rewritten" in page
    assert str(pydicom.dcmread(instance_path(two_patients[2][0].sop_instance_uid)).PatientName) == "Doe^Jane"


def test_confirming_rewrites_the_files_and_records_who(an_admin, two_patients):
    jane, _, instances = two_patients
    done = an_admin.post(correct_url(jane), {**patient_form(jane, patient_name=GREEK), "confirm": "1"})
    corrected = Patient.objects.get(patient_id="PAT001")
    assert done.status_code == 302 and done.url == reverse("admin:dicomnodes_patient_change", args=[corrected.pk])
    assert corrected.patient_name == GREEK
    for instance in instances[:2]:
        assert str(pydicom.dcmread(instance_path(instance.sop_instance_uid)).PatientName) == GREEK
    event = AuditEvent.objects.get(action="correct")
    assert event.actor == "admin" and event.details["changes"] == {"patient_name": ["Doe^Jane", GREEK]}


def test_a_bad_value_comes_back_with_its_message(an_admin, two_patients):
    jane = two_patients[0]
    page = an_admin.post(correct_url(jane), {**patient_form(jane, patient_birth_date="19701340"), "preview": "1"})
    assert "A date is YYYYMMDD" in page.content.decode()
    page = an_admin.post(correct_url(jane), {**patient_form(jane, patient_id="PAT009"), "confirm": "1"})
    assert page.status_code == 200 and "merge into it instead" in page.content.decode()
    assert not AuditEvent.objects.filter(action="correct").exists()


def test_a_study_is_corrected_from_its_page(an_admin, two_patients):
    study = two_patients[2][0].series.study
    assert (
        correct_url(study) in an_admin.get(reverse("admin:dicomnodes_study_change", args=[study.pk])).content.decode()
    )
    data = {
        "study_description": "CT THORAX",
        "accession_number": "ACC001",
        "referring_physician_name": "",
        "confirm": "1",
    }
    assert an_admin.post(correct_url(study), data).status_code == 302
    assert Study.objects.get(pk=study.pk).study_description == "CT THORAX"
    assert pydicom.dcmread(instance_path(two_patients[2][1].sop_instance_uid)).StudyDescription == "CT THORAX"


def test_a_viewer_sees_no_links_and_may_not_correct(a_viewer, two_patients):
    jane = two_patients[0]
    page = a_viewer.get(reverse("admin:dicomnodes_patient_change", args=[jane.pk])).content.decode()
    assert correct_url(jane) not in page
    assert a_viewer.get(correct_url(jane)).status_code == 403
    assert a_viewer.post(correct_url(jane), {**patient_form(jane, patient_name="X"), "confirm": "1"}).status_code == 403
    assert a_viewer.post(merge_url(two_patients[1]), {"patient_id": "PAT001", "confirm": "1"}).status_code == 403
    assert Patient.objects.count() == 2


def test_the_merge_action_leads_to_a_confirmation_with_both_ids(an_admin, two_patients):
    jane, duplicate, instances = two_patients
    changelist = reverse("admin:dicomnodes_patient_changelist")
    chosen = an_admin.post(changelist, {"action": "merge_into_patient", "_selected_action": [duplicate.pk]})
    assert chosen.status_code == 302 and chosen.url == merge_url(duplicate)
    review = an_admin.post(merge_url(duplicate), {"patient_id": "PAT001", "issuer_of_patient_id": ""}).content.decode()
    assert '<td class="source-id">PAT009</td>' in review and '<td class="target-id">PAT001</td>' in review
    assert "1 stored file will be rewritten" in review
    done = an_admin.post(merge_url(duplicate), {"patient_id": "PAT001", "issuer_of_patient_id": "", "confirm": "1"})
    assert done.status_code == 302 and done.url == reverse("admin:dicomnodes_patient_change", args=[jane.pk])
    assert not Patient.objects.filter(patient_id="PAT009").exists()
    assert Patient.objects.get(pk=jane.pk).num_studies == 2
    assert pydicom.dcmread(instance_path(instances[2].sop_instance_uid)).PatientID == "PAT001"


def test_merging_into_an_unknown_id_says_so(an_admin, two_patients):
    page = an_admin.post(merge_url(two_patients[1]), {"patient_id": "NOBODY", "confirm": "1"}).content.decode()
    assert "No other patient has this ID" in page
    assert Patient.objects.count() == 2
