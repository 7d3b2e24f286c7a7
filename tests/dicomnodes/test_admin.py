"""The admin: DICOM server settings (one row) and the read-only archive browser.

Personas: an admin (a superuser), a user who is not staff.
"""

import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.index import AssociationOpen, IndexItem, apply_batch
from dicomnodes.models import AssociationLog, DicomServerSettings, Instance, Patient, Series, Study
from tests.support.dicomdata import make_ct

# WhiteNoise warns that STATIC_ROOT does not exist: tests run without collectstatic.
pytestmark = pytest.mark.filterwarnings("ignore:No directory at")

SETTINGS_CHANGE = reverse("admin:dicomnodes_dicomserversettings_change", args=[1])


@pytest.fixture
def a_user_who_is_not_staff(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("jane", "", None))
    return client


def settings_form(**changes):
    """The settings change form as the browser posts it (unticked boxes are absent)."""
    row = DicomServerSettings.load()
    data = {
        "ae_title": row.ae_title,
        "port": row.port,
        "duplicate_policy": row.duplicate_policy,
        "service_timeout": row.service_timeout,
        "unknown_ae_may_echo_and_store": row.unknown_ae_may_echo_and_store,
        "fsync_on_store": row.fsync_on_store,
        "debug": row.debug,
        "case_insensitive_names": row.case_insensitive_names,
        "find_result_limit": row.find_result_limit,
        "max_outgoing_connections": row.max_outgoing_connections,
        "retry_delays": row.retry_delays,
        "open_transferred_studies": row.open_transferred_studies,
        "trust_any_sender": row.trust_any_sender,
        "max_associations": row.max_associations,
        "max_associations_per_address": row.max_associations_per_address,
        "max_inflated_mb": row.max_inflated_mb,
        "max_decoded_mb": row.max_decoded_mb,
        "tls_port": row.tls_port,
        "tls_certificate_file": row.tls_certificate_file,
        "tls_key_file": row.tls_key_file,
        "tls_client_ca_file": row.tls_client_ca_file,
    }
    data.update(changes)
    return {name: ("on" if value is True else value) for name, value in data.items() if value is not False}


# --- DICOM server settings --------------------------------------------------------


def test_the_settings_list_goes_straight_to_the_one_row(an_admin):
    response = an_admin.get(reverse("admin:dicomnodes_dicomserversettings_changelist"))
    assert response.status_code == 302
    assert response["Location"] == SETTINGS_CHANGE


def test_an_ae_title_with_a_space_is_shown_as_an_error_and_not_saved(an_admin):
    response = an_admin.post(SETTINGS_CHANGE, settings_form(ae_title="BAD TITLE"))
    assert response.status_code == 200
    assert "no spaces" in response.context["adminform"].form.errors["ae_title"][0]
    assert DicomServerSettings.load().ae_title == "PACS"


def test_a_valid_ae_title_and_port_are_saved(an_admin):
    response = an_admin.post(SETTINGS_CHANGE, settings_form(ae_title="ARCHIVE-1", port=4242, fsync_on_store=False))
    assert response.status_code == 302
    row = DicomServerSettings.load()
    assert (row.ae_title, row.port, row.fsync_on_store) == ("ARCHIVE-1", 4242, False)


def test_the_limits_are_saved_and_a_zero_maximum_is_refused(an_admin):
    response = an_admin.post(SETTINGS_CHANGE, settings_form(max_associations=50, max_associations_per_address=0))
    assert response.status_code == 200, "0 associations per address is no setting"
    assert DicomServerSettings.load().max_associations == 100
    response = an_admin.post(SETTINGS_CHANGE, settings_form(max_associations=50, max_inflated_mb=64))
    assert response.status_code == 302
    row = DicomServerSettings.load()
    assert (row.max_associations, row.max_inflated_mb) == (50, 64)


def test_bad_retry_delays_are_refused_with_a_reason(an_admin):
    response = an_admin.post(SETTINGS_CHANGE, settings_form(retry_delays="1m soon"))
    assert response.status_code == 200
    assert "&#x27;soon&#x27; is not a delay" in response.content.decode()
    assert DicomServerSettings.load().retry_delays == "1m 5m 15m 1h"


@pytest.mark.parametrize("view, args", [("delete", [1]), ("add", [])])
def test_the_settings_can_be_neither_deleted_nor_added(an_admin, view, args):
    DicomServerSettings.load()
    url = reverse(f"admin:dicomnodes_dicomserversettings_{view}", args=args)
    assert an_admin.get(url).status_code == 403
    assert an_admin.post(url, {"post": "yes"}).status_code == 403
    assert DicomServerSettings.objects.count() == 1


# --- the archive browser ------------------------------------------------------------


def index_ct(tmp_path, association_id=None, **make_ct_args):
    path = make_ct(tmp_path / f"{uuid.uuid4().hex}.dcm", size=8, **make_ct_args)
    item = IndexItem(
        read_header_file(path),
        file_size=path.stat().st_size,
        file_is_new=True,
        overwrite=False,
        calling_ae="MODALITY1",
        called_ae="PACS",
        association_id=association_id,
    )
    apply_batch([item])
    return Study.objects.get(study_instance_uid=item.header.study_instance_uid)


@pytest.fixture
def three_patients(db, tmp_path):
    """Three studies of three patients, one association."""
    association = AssociationLog(
        started_at=timezone.now(), calling_ae="MODALITY1", called_ae="PACS", peer_address="192.0.2.10"
    )
    apply_batch([AssociationOpen(association)])
    return {
        "jane": index_ct(
            tmp_path, association.id, patient_id="P1", patient_name="DOE^JANE", accession="ACC-A", study_date="20261127"
        ),
        "ronald": index_ct(
            tmp_path, patient_id="P2", patient_name="McDonald^Ronald", accession="ACC-B", study_date="20250101"
        ),
        "john": index_ct(tmp_path, patient_id="P3", patient_name="Doe^John", accession="ACC-C", study_date="20250101"),
    }


def listed(client, model, **params):
    """The rows a changelist shows."""
    response = client.get(reverse(f"admin:dicomnodes_{model}_changelist"), params)
    assert response.status_code == 200
    return set(response.context["cl"].result_list)


ARCHIVE_MODELS = [Patient, Study, Series, Instance, AssociationLog]


def model_ids(model):
    return model._meta.model_name


@pytest.mark.parametrize("model", ARCHIVE_MODELS, ids=model_ids)
def test_every_archive_page_lists_its_rows(an_admin, three_patients, model):
    rows = set(model.objects.all())
    assert rows and listed(an_admin, model._meta.model_name) == rows


def test_the_study_list_shows_what_a_person_looks_for(an_admin, three_patients):
    page = an_admin.get(reverse("admin:dicomnodes_study_changelist")).content.decode()
    for text in ("McDonald^Ronald", "ACC-B", "20261127", "CT CHEST"):
        assert text in page


def test_a_lower_case_patient_search_finds_upper_and_mixed_case_names(an_admin, three_patients):
    assert {p.patient_id for p in listed(an_admin, "patient", q="mcdonald")} == {"P2"}
    assert {p.patient_id for p in listed(an_admin, "patient", q="doe")} == {"P1", "P3"}


def test_a_lower_case_study_search_finds_the_patients_studies(an_admin, three_patients):
    assert listed(an_admin, "study", q="mcdonald") == {three_patients["ronald"]}


def test_a_study_search_by_accession_number_finds_that_study(an_admin, three_patients):
    assert listed(an_admin, "study", q="ACC-C") == {three_patients["john"]}


@pytest.mark.parametrize("date", ["20261127", "2026-11-27"])
def test_a_study_search_by_date_finds_the_studies_of_that_day(an_admin, three_patients, date):
    assert listed(an_admin, "study", q=date) == {three_patients["jane"]}


def test_the_study_list_filters_by_date(an_admin, three_patients):
    assert listed(an_admin, "study", study_date__exact="20250101") == {three_patients["ronald"], three_patients["john"]}


def test_a_study_search_keeps_the_active_filter(an_admin, three_patients):
    assert listed(an_admin, "study", study_date__exact="20250101", q="doe") == {three_patients["john"]}


@pytest.mark.parametrize("model", ARCHIVE_MODELS, ids=model_ids)
def test_an_archive_row_can_be_viewed_but_not_changed(an_admin, three_patients, model):
    row = model.objects.first()
    url = reverse(f"admin:dicomnodes_{model._meta.model_name}_change", args=[row.pk])
    assert an_admin.get(url).status_code == 200
    before = {f.name: getattr(row, f.attname) for f in row._meta.concrete_fields}

    response = an_admin.post(
        url,
        {
            "patient_name": "CHANGED",
            "calling_ae": "CHANGED",
            "modality": "XX",
            "sop_class_uid": "1.2.3",
            "study_description": "CHANGED",
        },
    )

    assert response.status_code == 403
    row.refresh_from_db()
    assert {f.name: getattr(row, f.attname) for f in row._meta.concrete_fields} == before


def test_a_user_who_is_not_staff_is_sent_to_the_login_page(a_user_who_is_not_staff, three_patients):
    url = reverse("admin:dicomnodes_study_changelist")
    response = a_user_who_is_not_staff.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
