"""The dashboard in a real browser: headless Chromium (Playwright) against a
real daphne and a real runscp; storescu sends a study and the page shows it
within 2 s, and opens it by itself when "open transferred studies when
received" is on."""

import re
import subprocess
import time

import pytest

from dicomnodes.models import DicomServerSettings, Study
from tests.support.dicomdata import make_ct
from tests.support.processes import BASE_DIR, free_port, port_accepts, server_env, wait_until

PASSWORD = "a long and unguessable passphrase"


@pytest.fixture
def web(transactional_db, data_dir, tmp_path):
    """daphne serving pacs_site.asgi on a free port; its base URL."""
    port = free_port()
    log_path = tmp_path / "daphne.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BASE_DIR / ".venv/bin/daphne"), "-b", "127.0.0.1", "-p", str(port), "pacs_site.asgi:application"],
            cwd=BASE_DIR,
            env=server_env(data_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: port_accepts(port) or proc.poll() is not None, 30, message=f"daphne on port {port}")
        assert proc.poll() is None, f"daphne exited early:\n{log_path.read_text()}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def dashboard_page(web, browser, django_user_model):
    """A staff member logged in (through the admin's login form) on /dashboard/."""
    django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True)
    page = browser.new_page()
    page.goto(f"{web}/dashboard/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{web}/dashboard/")
    page.wait_for_selector("#dash-status[data-state=live]", timeout=10_000)
    yield page
    page.close()


def test_a_study_sent_with_storescu_shows_within_two_seconds(dashboard_page, scp, tmp_path):
    page = dashboard_page
    sent = make_ct(tmp_path / "ct.dcm", study_date="20261125")

    proc = scp.store(sent)
    stored = time.monotonic()

    assert proc.returncode == 0, proc.stderr
    row = page.locator("#dash-event tbody tr", has_text="received from MODALITY1")
    row.wait_for(timeout=2000)
    assert time.monotonic() - stored < 2.0
    assert "Study 20261125 CT received from MODALITY1" in row.inner_text()
    # The association that carried it, closed, with its instance.
    association = page.locator("#dash-association tbody tr", has_text="MODALITY1 → PACS")
    association.wait_for(timeout=2000)
    assert "released" in association.inner_text()


def test_with_open_transferred_studies_on_the_page_opens_the_new_study(dashboard_page, scp, tmp_path):
    settings_row = DicomServerSettings.load()
    settings_row.open_transferred_studies = True
    settings_row.save()

    # The viewer opens in a window of its own (named "pacs-viewer"), the
    # dashboard stays.  (A browser that blocks windows a page opens without a
    # click gets the viewer in the dashboard's tab instead.)
    with dashboard_page.context.expect_page(timeout=5000) as opened:
        scp.store(make_ct(tmp_path / "ct.dcm"))
    viewer = opened.value
    viewer.wait_for_url(re.compile(r"/viewer/viewer\?StudyInstanceUIDs="), timeout=5000)
    study = Study.objects.get()
    assert viewer.url.endswith(f"/viewer/viewer?StudyInstanceUIDs={study.study_instance_uid}")
    assert dashboard_page.url.endswith("/dashboard/")
