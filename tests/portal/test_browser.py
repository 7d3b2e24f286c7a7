"""The portal in a real browser (Debian's headless Chromium driven by
Playwright) against a real web process (`manage.py runpacs --only web`).

Personas: a patient with a token, an admin (a superuser).
"""

import datetime as dt
import zipfile

import pydicom
import pytest
from django.utils import timezone

from portal.models import HttpSettings
from portal.tokens import create_token
from tests.support.portal import start_runpacs_web, store_study, wait_for_web
from tests.support.processes import free_port


@pytest.fixture
def site(transactional_db, data_dir, tmp_path):
    """The web server on a free port, institution and department set, one
    study of two series; returns (base URL, study)."""
    port = free_port()
    http = HttpSettings.load()
    http.web_port, http.web_server_name = port, "127.0.0.1"
    http.institution, http.department = "General Hospital", "Radiology"
    http.save()
    today = timezone.localdate().strftime("%Y%m%d")
    study = store_study(tmp_path, series=2, per_series=3, patient_name="Doe^Jane", study_date=today)
    web = start_runpacs_web(data_dir, tmp_path / "runpacs.log")
    try:
        wait_for_web(f"http://127.0.0.1:{port}/admin/login/", web)
        yield f"http://127.0.0.1:{port}", study
    finally:
        web.stop()


def test_a_patient_opens_the_link_sees_previews_and_downloads_the_study(browser, site, tmp_path):
    base, study = site
    page = browser.new_page(accept_downloads=True)
    response = page.goto(f"{base}/token?{create_token(study).clear}")

    assert response.status == 200
    assert "General Hospital" in page.inner_text("header") and "Radiology" in page.inner_text("header")
    assert page.inner_text("#patient h1") == "Doe, Jane"
    previews = page.locator("img.preview")
    assert previews.count() == 2
    for i in range(2):
        previews.nth(i).scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=previews.nth(i).element_handle())

    with page.expect_download() as download_info:
        page.click("a.download")
    saved = tmp_path / "study.zip"
    download_info.value.save_as(saved)

    with zipfile.ZipFile(saved) as archive:
        dicomdir = pydicom.dcmread(archive.open("DICOMDIR"))
        listed = {
            r.ReferencedSOPInstanceUIDInFile
            for r in dicomdir.DirectoryRecordSequence
            if r.DirectoryRecordType == "IMAGE"
        }
        names = set(archive.namelist())
    expected = {i.sop_instance_uid for s in study.series.all() for i in s.instances.all()}
    assert listed == expected and len(expected) == 6
    assert len(names) == 7


def test_an_expired_link_shows_the_gone_page(browser, site):
    base, study = site
    new = create_token(study)
    new.row.__class__.objects.filter(pk=new.row.pk).update(expires_at=timezone.now() - dt.timedelta(minutes=1))
    page = browser.new_page()

    response = page.goto(f"{base}/token?{new.clear}")

    assert response.status == 410
    assert "This link is no longer valid" in page.inner_text("#gone")
    assert "expired on" in page.inner_text("#gone")
    assert "General Hospital" in page.inner_text("header")


def test_an_admin_creates_a_patient_link_with_a_qr_code_and_it_opens(browser, site, django_user_model):
    base, study = site
    django_user_model.objects.create_superuser("admin", "", "a long secret passphrase")
    page = browser.new_page()
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "a long secret passphrase")
    page.click("input[type=submit]")
    assert "General Hospital" in page.inner_text("#header")

    page.goto(f"{base}/admin/dicomnodes/study/")
    page.check(f"input[name=_selected_action][value='{study.pk}']")
    page.select_option("select[name=action]", "create_patient_link")
    page.click("button[name=index]")

    url = page.input_value("input.token-url")
    assert url.startswith(f"{base}/token?") and len(url.split("?", 1)[1]) == 64
    qr = page.locator(".qr-code svg")
    assert qr.count() == 1 and qr.bounding_box()["width"] > 100

    patient = browser.new_page()
    assert patient.goto(url).status == 200
    assert patient.inner_text("#patient h1") == "Doe, Jane"


def test_an_admin_presses_echo_on_a_peer_and_sees_the_round_trip(browser, site, scp, django_user_model):
    from dicomnodes.models import Peer

    base, _ = site
    Peer.objects.create(name="ourselves", ae_title="PACS", host="127.0.0.1", port=scp.port)
    Peer.objects.create(name="nobody home", ae_title="DOWN", host="127.0.0.1", port=free_port())
    django_user_model.objects.create_superuser("admin", "", "a long secret passphrase")
    page = browser.new_page()
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "a long secret passphrase")
    page.click("input[type=submit]")

    page.goto(f"{base}/admin/dicomnodes/peer/")
    page.locator("tr", has_text="ourselves").get_by_role("button", name="Echo").click()
    success = page.locator("ul.messagelist li.success")
    assert "ourselves (pacs@127.0.0.1" in success.text_content().lower()
    assert "echo OK in" in success.inner_text()

    page.locator("tr", has_text="nobody home").get_by_role("button", name="Echo").click()
    assert "connection refused" in page.locator("ul.messagelist li.error").inner_text()
