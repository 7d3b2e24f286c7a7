"""The OHIF viewer under /viewer/ (portal/viewer): the unpacked release
(README's commands fetch it: bin/fetch-viewer), served with its paths moved
below /viewer/, configured per request for staff and for a patient link,
and the links that open it (admin, dashboard, the link page).

Personas: an admin (superuser), a patient with a token, a stranger.
"""

import datetime as dt
import gzip
import json
import re

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from pacs_site.events import event_item
from pacs_site.models import Event
from portal.tokens import create_token
from portal.viewer import fetch, pin
from tests.support.portal import store_study

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def viewer_installed():
    if not fetch.is_present():
        pytest.fail(f"the OHIF viewer {pin.VERSION} is not unpacked: run bin/fetch-viewer (bin/test does)")


@pytest.fixture
def admin(client, django_user_model):
    django_user_model.objects.create_superuser("admin", password="x" * 20)
    client.login(username="admin", password="x" * 20)
    return client


def body(response) -> bytes:
    if not response.streaming:
        return response.content
    if not response.is_async:
        return b"".join(response.streaming_content)

    async def collect():
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)()


def inline_config(html: str) -> dict:
    found = re.search(r"window\.config = (\{.*?\});\n", html, re.S)
    assert found, "no inline window.config"
    return json.loads(found.group(1))


def test_the_index_loads_its_config_and_bundle_below_viewer(admin):
    response = admin.get("/viewer/")

    html = body(response).decode()
    assert response.status_code == 200 and response["Cache-Control"] == "no-store, private"
    assert 'src="/viewer/app-config.js"' in html
    assert re.search(r'src="/viewer/app\.bundle\.[0-9a-f]{16}\.js"', html)
    assert 'window.PUBLIC_URL="/viewer/"' in html
    assert not re.search(r'(src|href)="/(?!viewer/)', html), "a path left at the site root"


def test_ohif_routes_fall_back_to_the_index(admin):
    response = admin.get("/viewer/viewer", {"StudyInstanceUIDs": "1.2.3"})

    assert response.status_code == 200
    assert b"app-config.js" in body(response)


def test_a_stranger_opening_the_viewer_is_sent_to_the_login_page(client):
    response = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/viewer/viewer")


def test_the_staff_config_reads_our_dicomweb_root_with_the_study_list(admin):
    response = admin.get("/viewer/app-config.js")

    assert response["Content-Type"].startswith("text/javascript")
    config = inline_config(response.content.decode())
    assert config["routerBasename"] == "/viewer" and config["showStudyList"] is True
    (source,) = config["dataSources"]
    roots = {source["configuration"][k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")}
    assert roots == {"http://testserver/dicomweb"}
    assert source["configuration"]["staticWado"] is False
    assert source["configuration"]["thumbnailRendering"] == "wadors"
    assert source["configuration"]["qidoSupportsIncludeField"] is True


def test_a_bundle_is_streamed_with_its_public_path_rebased_and_cached_for_a_year(client):
    bundle = next(fetch.viewer_dir().glob("app.bundle.*.js"))

    response = client.get(f"/viewer/{bundle.name}")

    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/javascript"
    assert response["Content-Length"] == str(bundle.stat().st_size)
    assert response["Cache-Control"] == "public, max-age=31536000, immutable"
    content = body(response)
    assert content == bundle.read_bytes()
    assert b'__webpack_require__.p = "/viewer/";' in content
    assert b'__webpack_require__.p = "/";' not in content
    again = client.get(f"/viewer/{bundle.name}", HTTP_IF_NONE_MATCH=response["ETag"])
    assert again.status_code == 304


def test_a_browser_that_takes_gzip_gets_the_compressed_copy(client):
    bundle = next(fetch.viewer_dir().glob("app.bundle.*.js"))

    response = client.get(f"/viewer/{bundle.name}", HTTP_ACCEPT_ENCODING="gzip, deflate, br")

    assert response["Content-Encoding"] == "gzip" and response["Vary"] == "Accept-Encoding"
    packed = body(response)
    assert int(response["Content-Length"]) == len(packed) < bundle.stat().st_size / 3
    assert gzip.decompress(packed) == bundle.read_bytes()
    refused = client.get(f"/viewer/{bundle.name}", HTTP_ACCEPT_ENCODING="gzip;q=0, identity")
    assert "Content-Encoding" not in refused and body(refused) == bundle.read_bytes()


def test_the_stylesheet_fonts_and_wasm_are_below_viewer(client):
    css = body(client.get("/viewer/app.bundle.css"))
    wasm = next(fetch.viewer_dir().glob("*.wasm"))

    assert re.findall(rb"url\((/[^)]*)\)", css) and all(
        u.startswith(b"/viewer/") for u in re.findall(rb"url\((/[^)]*)\)", css)
    )
    assert client.get(f"/viewer/{wasm.name}")["Content-Type"] == "application/wasm"


def test_a_missing_file_is_a_404_not_the_page(client):
    assert client.get("/viewer/ort/ort.all.js").status_code == 404
    assert client.get("/viewer/.integrity").status_code == 404
    assert client.get("/viewer/%2e%2e/%2e%2e/manage.py").status_code == 404


def test_a_patient_link_viewer_reads_only_its_root_and_opens_its_study(client, tmp_path):
    study = store_study(tmp_path, series=1, per_series=2)
    new = create_token(study)

    response = client.get(f"/viewer/link?{new.clear}")

    html = response.content.decode()
    assert response.status_code == 200
    assert response["Referrer-Policy"] == "no-referrer" and response["Cache-Control"] == "no-store, private"
    assert "app-config.js" not in html  # inline instead of the staff one
    config = inline_config(html)
    assert config["showStudyList"] is False and config["routerBasename"] == "/viewer/link"
    (source,) = config["dataSources"]
    roots = {source["configuration"][k] for k in ("qidoRoot", "wadoRoot", "wadoUriRoot")}
    assert roots == {f"http://testserver/dicomweb/t/{new.clear}"}
    assert f'"/viewer/link/viewer?StudyInstanceUIDs={study.study_instance_uid}"' in html
    new.row.refresh_from_db()
    assert new.row.use_count == 1


def test_an_expired_or_unknown_link_gets_no_viewer(client, tmp_path):
    study = store_study(tmp_path, series=1, per_series=1)
    expired = create_token(study)
    expired.row.__class__.objects.filter(pk=expired.row.pk).update(expires_at=timezone.now() - dt.timedelta(1))

    assert client.get(f"/viewer/link?{expired.clear}").status_code == 410
    assert client.get("/viewer/link?" + "A" * 43).status_code == 404


def test_a_reload_below_the_link_viewer_goes_back_through_the_kept_token(client):
    response = client.get("/viewer/link/viewer?StudyInstanceUIDs=1.2.3")

    assert response.status_code == 200
    assert 'sessionStorage.getItem("pacs-viewer-link")' in response.content.decode()
    assert 'location.replace("/viewer/link?" + token)' in response.content.decode()


def test_the_link_page_has_a_view_images_button_for_its_viewer(client, tmp_path):
    study = store_study(tmp_path, series=1, per_series=1)
    new = create_token(study)

    html = client.get(f"/token?{new.clear}").content.decode()

    assert f'class="button view-images" href="/viewer/link?{new.clear}"' in html
    assert "Download (ZIP with DICOMDIR)" in html


def test_the_admin_study_and_series_pages_open_the_viewer(admin, tmp_path):
    study = store_study(tmp_path, series=1, per_series=1)
    series = study.series.get()
    study_link = f'href="/viewer/viewer?StudyInstanceUIDs={study.study_instance_uid}"'
    series_link = (
        f'href="/viewer/viewer?StudyInstanceUIDs={study.study_instance_uid}'
        f'&amp;initialSeriesInstanceUID={series.series_instance_uid}"'
    )

    for url, link in [
        ("/admin/dicomnodes/study/", study_link),
        (f"/admin/dicomnodes/study/{study.pk}/change/", study_link),
        ("/admin/dicomnodes/series/", series_link),
        (f"/admin/dicomnodes/series/{series.pk}/change/", series_link),
    ]:
        html = admin.get(url).content.decode()
        assert link in html and "Open in viewer" in html, url


def test_a_dashboard_event_carries_its_study_in_the_viewer(tmp_path):
    study = store_study(tmp_path, series=1, per_series=1)
    event = Event.objects.create(kind="study_received", message="m", study_instance_uid=study.study_instance_uid)

    item = event_item(event)

    assert item["viewer_url"] == f"/viewer/viewer?StudyInstanceUIDs={study.study_instance_uid}"
