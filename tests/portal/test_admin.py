"""The admin side of the portal: HTTP settings (TLS files checked), the
institution in the header, "Create patient link" on studies, the token list;
and `check --deploy` with the production settings.

Personas: an admin (a superuser), a staff member who may only view studies.
"""

import datetime as dt
import os
import re
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.auth.models import Permission
from django.urls import reverse

from portal.models import HttpSettings, StudyToken, hash_token
from tests.support.portal import self_signed, store_study
from tests.support.processes import BASE_DIR

pytestmark = pytest.mark.filterwarnings("ignore:No directory at")

SETTINGS_CHANGE = reverse("admin:portal_httpsettings_change", args=[1])
STUDIES = reverse("admin:dicomnodes_study_changelist")


def settings_form(**changes):
    row = HttpSettings.load()
    data = {
        "institution": row.institution,
        "department": row.department,
        "web_port": row.web_port,
        "web_server_name": row.web_server_name,
        "public_ip": row.public_ip or "",
        "tls_enabled": row.tls_enabled,
        "tls_certificate_file": row.tls_certificate_file,
        "tls_key_file": row.tls_key_file,
        "study_accessibility": row.study_accessibility,
        "preview_max_megapixels": row.preview_max_megapixels,
    }
    data.update(changes)
    return {name: ("on" if value is True else value) for name, value in data.items() if value is not False}


def errors_of(response):
    assert response.status_code == 200, "the form was accepted"
    return response.context["adminform"].form.errors


def test_the_settings_are_saved_from_the_admin(an_admin):
    response = an_admin.post(
        SETTINGS_CHANGE,
        settings_form(institution="General Hospital", department="Radiology", web_port=8080, study_accessibility="3m"),
    )
    assert response.status_code == 302
    row = HttpSettings.load()
    assert (row.institution, row.department, row.web_port, row.study_accessibility) == (
        "General Hospital",
        "Radiology",
        8080,
        "3m",
    )


def test_the_settings_page_shows_the_detected_public_ip_read_only(an_admin):
    HttpSettings.load()
    page = an_admin.get(SETTINGS_CHANGE).content.decode()
    assert "Detected public IP" in page
    assert 'name="detected_ip"' not in page
    assert HttpSettings.load().effective_public_ip() in page


def test_a_valid_certificate_and_key_are_accepted(an_admin, tmp_path):
    cert, key = self_signed(tmp_path)
    response = an_admin.post(
        SETTINGS_CHANGE, settings_form(tls_enabled=True, tls_certificate_file=str(cert), tls_key_file=str(key))
    )
    assert response.status_code == 302
    assert HttpSettings.load().tls_enabled


def test_a_key_of_another_certificate_is_refused(an_admin, tmp_path):
    cert, _ = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    errors = errors_of(
        an_admin.post(
            SETTINGS_CHANGE,
            settings_form(tls_enabled=True, tls_certificate_file=str(cert), tls_key_file=str(other_key)),
        )
    )
    assert errors["tls_key_file"] == ["This key does not belong to the certificate (another key pair)."]
    assert not HttpSettings.load().tls_enabled


def test_an_expired_certificate_is_refused_with_its_end_date(an_admin, tmp_path):
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    cert, key = self_signed(tmp_path, not_before=start, days=30)
    errors = errors_of(
        an_admin.post(
            SETTINGS_CHANGE, settings_form(tls_enabled=True, tls_certificate_file=str(cert), tls_key_file=str(key))
        )
    )
    assert errors["tls_certificate_file"] == ["The certificate expired on 2020-01-31 00:00 UTC: renew it."]


def test_a_missing_certificate_file_is_named(an_admin, tmp_path):
    _, key = self_signed(tmp_path)
    missing = tmp_path / "nowhere.crt"
    errors = errors_of(
        an_admin.post(
            SETTINGS_CHANGE, settings_form(tls_enabled=True, tls_certificate_file=str(missing), tls_key_file=str(key))
        )
    )
    assert errors["tls_certificate_file"] == [f"The certificate file {missing} does not exist."]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_key_file_is_refused(an_admin, tmp_path):
    cert, key = self_signed(tmp_path)
    key.chmod(0)
    errors = errors_of(
        an_admin.post(
            SETTINGS_CHANGE, settings_form(tls_enabled=True, tls_certificate_file=str(cert), tls_key_file=str(key))
        )
    )
    assert errors["tls_key_file"] == [f"The key file {key} cannot be read (permission denied)."]


def test_a_folder_given_as_key_file_is_refused(an_admin, tmp_path):
    cert, _ = self_signed(tmp_path)
    errors = errors_of(
        an_admin.post(
            SETTINGS_CHANGE, settings_form(tls_enabled=True, tls_certificate_file=str(cert), tls_key_file=str(tmp_path))
        )
    )
    assert errors["tls_key_file"] == [f"{tmp_path} is a folder, not a key file."]


def test_a_file_that_is_not_a_certificate_is_refused(an_admin, tmp_path):
    _, key = self_signed(tmp_path)
    junk = tmp_path / "junk.crt"
    junk.write_text("hello")
    errors = errors_of(
        an_admin.post(
            SETTINGS_CHANGE, settings_form(tls_enabled=True, tls_certificate_file=str(junk), tls_key_file=str(junk))
        )
    )
    assert errors["tls_certificate_file"] == [f"{junk} is not a certificate (PEM expected, .crt)."]
    assert errors["tls_key_file"] == [f"{junk} is not a private key (PEM expected, .key)."]


def test_tls_without_files_asks_for_them(an_admin):
    errors = errors_of(an_admin.post(SETTINGS_CHANGE, settings_form(tls_enabled=True)))
    assert "give the path of the certificate file" in errors["tls_certificate_file"][0]
    assert "give the path of the key file" in errors["tls_key_file"][0]


def test_an_rsa_key_pair_is_checked_as_well(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from pacs_site.tls import check_certificate_pair

    cert, key = self_signed(tmp_path / "a", key=rsa.generate_private_key(65537, 2048))
    _, ec_key = self_signed(tmp_path / "b", key=ec.generate_private_key(ec.SECP384R1()))
    assert check_certificate_pair(str(cert), str(key)) == []
    assert [p.field for p in check_certificate_pair(str(cert), str(ec_key))] == ["key"]


def test_the_admin_header_names_the_institution_and_department(an_admin):
    an_admin.post(SETTINGS_CHANGE, settings_form(institution="General Hospital", department="Radiology"))
    page = an_admin.get(reverse("admin:index")).content.decode()
    assert "General Hospital — Radiology" in page


# --- "Create patient link" ------------------------------------------------------------


@pytest.fixture
def a_two_image_study(db, data_dir, tmp_path):
    return store_study(tmp_path, series=1, per_series=2)


def create_link(client, study, action="create_patient_link"):
    return client.post(STUDIES, {"action": action, "_selected_action": [study.pk], "index": 0})


def test_an_admin_sees_the_create_patient_link_action(an_admin, a_two_image_study):
    page = an_admin.get(STUDIES).content.decode()
    assert 'value="create_patient_link"' in page


def test_create_patient_link_shows_the_full_url_and_a_qr_code_once(an_admin, a_two_image_study):
    http = HttpSettings.load()
    http.web_server_name, http.web_port = "pacs.example.org", 3000
    http.save()

    page = create_link(an_admin, a_two_image_study).content.decode()

    clear = re.search(r"http://pacs\.example\.org:3000/token\?([A-Za-z0-9_-]{64})", page).group(1)
    token = StudyToken.objects.get()
    assert token.token_hash == hash_token(clear) and token.study == a_two_image_study and token.scope == "study"
    assert "<svg" in page
    # Afterwards the token list and the token page show the hash, never the token.
    for url in (
        reverse("admin:portal_studytoken_changelist"),
        reverse("admin:portal_studytoken_change", args=[token.pk]),
    ):
        shown = an_admin.get(url).content.decode()
        assert clear not in shown and token.token_hash[:12] in shown


def test_a_link_for_all_studies_of_the_patient_has_patient_scope(an_admin, a_two_image_study):
    create_link(an_admin, a_two_image_study, "create_patient_link_all_studies")
    assert StudyToken.objects.get().scope == "patient"


def test_staff_who_may_only_view_studies_cannot_create_links(client, django_user_model, a_two_image_study):
    viewer = django_user_model.objects.create_user("viewer", "", None, is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_study"))
    client.force_login(viewer)
    assert 'value="create_patient_link"' not in client.get(STUDIES).content.decode()
    create_link(client, a_two_image_study)
    assert not StudyToken.objects.exists()


def test_revoking_from_the_token_list(an_admin, a_two_image_study):
    create_link(an_admin, a_two_image_study)
    token = StudyToken.objects.get()
    an_admin.post(
        reverse("admin:portal_studytoken_changelist"),
        {"action": "revoke_selected", "_selected_action": [token.pk], "index": 0},
    )
    token.refresh_from_db()
    assert token.is_revoked()


def test_tokens_are_not_added_by_hand(an_admin):
    assert an_admin.get(reverse("admin:portal_studytoken_add")).status_code == 403


# --- production settings --------------------------------------------------------------


def test_check_deploy_passes_with_the_production_settings(tmp_path):
    env = dict(
        os.environ,
        PACS_PRODUCTION="1",
        DEBUG="0",
        SECRET_KEY="x7Kp2" * 12,
        ALLOWED_HOSTS="pacs.example.org",
        PACS_DATA_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="pacs_site.settings",
    )
    proc = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "check", "--deploy"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "(security." not in output, output


def test_production_refuses_debug(tmp_path):
    env = dict(os.environ, PACS_PRODUCTION="1", DEBUG="1", PACS_DATA_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "check"], cwd=BASE_DIR, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "PACS_PRODUCTION=1 needs DEBUG off" in proc.stderr


def test_the_web_port_cannot_be_the_dicom_servers(an_admin):
    from dicomnodes.models import DicomServerSettings

    dicom = DicomServerSettings.load()
    errors = errors_of(an_admin.post(SETTINGS_CHANGE, settings_form(web_port=dicom.port)))
    assert errors["web_port"] == [f"Port {dicom.port} is the DICOM server's: choose another."]
