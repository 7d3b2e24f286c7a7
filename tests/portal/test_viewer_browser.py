"""The OHIF viewer in a real browser (Debian's headless Chromium with
SwiftShader WebGL, Playwright) against a real web process (`manage.py
runpacs --only web`) serving /viewer/ and /dicomweb/ (QIDO-RS, WADO-RS).

The viewport shows pixels (its canvas is not blank), the mouse wheel moves
to the next image (the canvas changes: each test image differs), nothing
below /viewer/ is missing (what fetch.DROPPED leaves out is never asked
for), and a patient link's viewer reaches its study only.

Personas: an admin (a superuser), a patient with a token.
"""

from urllib.parse import parse_qs, urlsplit

import pytest

from portal.models import HttpSettings, TokenScope
from portal.tokens import create_token
from portal.viewer import fetch
from tests.support.portal import start_runpacs_web, store_study, wait_for_web
from tests.support.processes import free_port

PASSWORD = "a long and unguessable passphrase"
# The first cornerstone viewport's on-screen canvas (2D: cornerstone copies
# each WebGL frame onto it): how many pixels are not black, and a digest.
CANVAS_STATS = """() => {
  const canvas = document.querySelector("canvas.cornerstone-canvas");
  if (!canvas || !canvas.width || !canvas.height) return {lit: 0, digest: 0};
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0, digest = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] || data[i + 1] || data[i + 2]) lit++;
    digest = (digest * 31 + data[i]) % 1000000007;
  }
  return {lit, digest};
}"""
SHOWS_PIXELS = f"() => ({CANVAS_STATS})().lit > 500"


@pytest.fixture
def site(transactional_db, data_dir, tmp_path):
    """The web server on a free port and two studies of one patient (3 CT
    images each, every image different; `other` a week older); returns
    (base URL, study, other)."""
    if not fetch.is_present():
        pytest.fail("the OHIF viewer is not unpacked: run bin/fetch-viewer (bin/test does)")
    port = free_port()
    http = HttpSettings.load()
    http.web_port, http.web_server_name = port, "127.0.0.1"
    http.save()
    study = store_study(tmp_path / "a", series=1, per_series=3, patient_name="Doe^Jane", size=256)
    other = store_study(
        tmp_path / "b", series=1, per_series=3, patient_name="Doe^Jane", size=256, study_date="20261120"
    )
    web = start_runpacs_web(data_dir, tmp_path / "runpacs.log")
    try:
        wait_for_web(f"http://127.0.0.1:{port}/admin/login/", web)
        yield f"http://127.0.0.1:{port}", study, other
    finally:
        web.stop()


@pytest.fixture
def missing(browser):
    """Every 404 below /viewer/ any page of the test met."""
    return []


def watch(page, missing):
    page.context.on("response", lambda r: r.status == 404 and "/viewer/" in r.url and missing.append(r.url))
    return page


def log_in(page, base, django_user_model):
    django_user_model.objects.create_superuser("admin", password=PASSWORD)
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}/admin/")


def overlay_says(viewer, text):
    viewer.wait_for_function("text => document.body.innerText.includes(text)", arg=text, timeout=10_000)


def viewport_says(viewer, text):
    """The first viewport's top-left overlay (study date, series) shows `text`."""
    viewer.wait_for_function(
        """text => (document.querySelector('[data-cy="viewport-overlay-top-left"]') || {}).innerText?.includes(text)""",
        arg=text,
        timeout=10_000,
    )


def scroll_to_the_next_image(viewer):
    """From the first image of three to the second: the overlay's "(n/3)"
    and the canvas both change."""
    overlay_says(viewer, "(1/3)")
    before = viewer.evaluate(CANVAS_STATS)["digest"]
    box = viewer.locator("canvas.cornerstone-canvas").first.bounding_box()
    viewer.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    viewer.mouse.wheel(0, 120)
    viewer.wait_for_function(f"before => ({CANVAS_STATS})().digest !== before", arg=before, timeout=10_000)
    overlay_says(viewer, "(2/3)")


def test_staff_open_a_study_from_the_admin_see_pixels_and_scroll(browser, site, missing, django_user_model):
    base, study, _ = site
    page = watch(browser.new_page(), missing)
    log_in(page, base, django_user_model)
    page.goto(f"{base}/admin/dicomnodes/study/{study.pk}/change/")

    with page.context.expect_page() as opened:
        page.click("a.viewer-link")
    viewer = opened.value

    viewer.wait_for_function(SHOWS_PIXELS, timeout=30_000)
    assert f"StudyInstanceUIDs={study.study_instance_uid}" in viewer.url
    scroll_to_the_next_image(viewer)
    assert missing == []


def test_a_patient_views_the_images_of_the_link_and_reaches_no_other_study(browser, site, missing):
    base, study, other = site
    new = create_token(study)
    page = watch(browser.new_page(), missing)
    page.goto(f"{base}/token?{new.clear}")

    with page.context.expect_page() as opened:
        page.click("a.view-images")
    viewer = opened.value

    viewer.wait_for_function(SHOWS_PIXELS, timeout=30_000)
    assert new.clear not in viewer.url  # the address no longer shows it
    assert viewer.url.startswith(f"{base}/viewer/link/viewer?StudyInstanceUIDs={study.study_instance_uid}")
    scroll_to_the_next_image(viewer)
    root = f"/dicomweb/t/{new.clear}"
    outside = viewer.evaluate(
        """async ([root, uid]) => {
          const wado = await fetch(`${root}/studies/${uid}/metadata`);
          const qido = await fetch(`${root}/studies?StudyInstanceUID=${uid}`);
          return {wado: wado.status, qido: qido.status, found: (await qido.text()).includes(uid)};
        }""",
        [root, other.study_instance_uid],
    )
    assert outside["wado"] in (403, 404)
    assert outside["qido"] in (200, 204) and outside["found"] is False

    # A reload comes back through the token this tab kept, to the same study.
    with viewer.expect_response(lambda r: r.url.startswith(f"{base}/viewer/link?")) as relaunched:
        viewer.reload()
    assert relaunched.value.status == 200
    viewer.wait_for_load_state()
    viewer.wait_for_function(SHOWS_PIXELS, timeout=30_000)
    assert viewer.url == f"{base}/viewer/link/viewer?StudyInstanceUIDs={study.study_instance_uid}"
    assert missing == []


def test_a_patient_link_to_all_studies_shows_each_of_them_and_no_other_patients(browser, site, missing, tmp_path):
    base, study, other = site
    stranger = store_study(
        tmp_path / "c", series=1, per_series=3, patient_id="PAT002", patient_name="Roe^Rick", size=256
    )
    new = create_token(study, scope=TokenScope.PATIENT)
    page = watch(browser.new_page(), missing)
    page.goto(f"{base}/token?{new.clear}")
    assert page.locator("section.study").count() == 2

    # One "View images" opens both studies: OHIF's study browser lists them,
    # newest first, and the viewport shows one of them (whichever OHIF has
    # first: it varies from run to run).
    with page.context.expect_page() as opened:
        page.click("a.view-images")
    viewer = opened.value
    viewer.wait_for_function(SHOWS_PIXELS, timeout=30_000)
    assert new.clear not in viewer.url
    [uids] = parse_qs(urlsplit(viewer.url).query)["StudyInstanceUIDs"]
    assert sorted(uids.split(",")) == sorted([study.study_instance_uid, other.study_instance_uid])
    listed = {"27-Nov-2026": study, "20-Nov-2026": other}  # in the study browser's order
    viewer.wait_for_function("() => document.body.innerText.includes('20-Nov-2026')", timeout=10_000)
    panel = viewer.locator('[data-cy="studyBrowser-panel"]').inner_text()
    assert panel.index("27-Nov-2026") < panel.index("20-Nov-2026")
    shown = viewer.wait_for_function(
        """dates => {
          const overlay = document.querySelector('[data-cy="viewport-overlay-top-left"]');
          return overlay && dates.find(date => overlay.innerText.includes(date));
        }""",
        arg=list(listed),
        timeout=10_000,
    ).json_value()
    scroll_to_the_next_image(viewer)

    # The other study: its series thumbnail, double-clicked (past OHIF's first-use tour and banner).
    [(date, second)] = [(date, row) for date, row in listed.items() if date != shown]
    viewer.locator('button:has-text("Skip all"):visible').first.click()
    viewer.get_by_text("Confirm and hide").click()
    viewer.wait_for_timeout(500)  # the thumbnails' own frame requests are done
    frames = []
    viewer.on("request", lambda r: "/frames/" in r.url and frames.append(r.url))
    viewer.locator('[data-cy="study-browser-thumbnail"]').nth(list(listed).index(date)).dblclick()
    viewport_says(viewer, date)
    viewer.wait_for_function(SHOWS_PIXELS, timeout=30_000)
    scroll_to_the_next_image(viewer)
    assert any(f"/studies/{second.study_instance_uid}/" in url for url in frames)  # its images were read

    # The link's root from the viewer's page: the patient's two studies, not the stranger's.
    reached = viewer.evaluate(
        """async ([root, own, theirs]) => {
          const all = await fetch(`${root}/studies`);
          const status = async url => (await fetch(url)).status;
          const qido = await fetch(`${root}/studies?StudyInstanceUID=${theirs}`);
          return {
            listed: (await all.json()).map(s => s["0020000D"].Value[0]),
            own: await status(`${root}/studies/${own}/metadata`),
            wado: await status(`${root}/studies/${theirs}/metadata`),
            series: await status(`${root}/studies/${theirs}/series`),
            byPatient: await status(`${root}/studies?PatientID=PAT002`),
            qido: qido.status,
            found: (await qido.text()).includes(theirs),
          };
        }""",
        [f"/dicomweb/t/{new.clear}", other.study_instance_uid, stranger.study_instance_uid],
    )
    assert sorted(reached["listed"]) == sorted([study.study_instance_uid, other.study_instance_uid])
    assert reached["own"] == 200
    assert reached["wado"] in (403, 404)
    assert reached["series"] in (204, 403, 404)
    assert reached["byPatient"] == 204
    assert reached["qido"] in (200, 204) and reached["found"] is False
    assert missing == []
