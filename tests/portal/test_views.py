"""The token page with Django's test client: who gets what, the headers, the
previews and the ZIP download.

Personas: a patient with a token, a stranger guessing tokens.
"""

import datetime as dt
import io
import logging
import zipfile

import pydicom
import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from portal.models import HttpSettings
from portal.tokens import create_token
from tests.support.portal import store_study

pytestmark = [pytest.mark.archive, pytest.mark.filterwarnings("ignore:No directory at")]


@pytest.fixture(autouse=True)
def fresh_rate_limit():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def a_study_of_today(db, data_dir, tmp_path):
    http = HttpSettings.load()
    http.institution, http.department = "General Hospital", "Radiology"
    http.save()
    return store_study(tmp_path, series=2, per_series=3, patient_name="Doe^Jane", study_date=_today())


def _today():
    return timezone.localdate().strftime("%Y%m%d")


@pytest.fixture
def a_patient_with_a_token(client, a_study_of_today):
    """(client, clear token)"""
    return client, create_token(a_study_of_today).clear


def test_the_token_page_shows_institution_patient_studies_series_and_expiry(a_patient_with_a_token, a_study_of_today):
    client, token = a_patient_with_a_token
    response = client.get(f"/token?{token}")
    page = response.content.decode()
    assert response.status_code == 200
    for text in ("General Hospital", "Radiology", "Doe, Jane", "1970-01-01", "CT CHEST", "SERIES 1", "SERIES 2"):
        assert text in page
    assert a_study_of_today.tokens.get().expires_at.strftime("%Y-%m-%d") in page
    assert page.count('class="preview"') == 2
    assert "Download" in page


def test_a_wrong_token_is_not_found(client, a_study_of_today):
    create_token(a_study_of_today)
    response = client.get("/token?" + "x" * 64)
    assert response.status_code == 404
    assert "Link not found" in response.content.decode()


def test_a_page_without_a_token_is_not_found(client, db):
    assert client.get("/token").status_code == 404


def test_an_expired_token_is_gone_and_says_so(client, db, data_dir, tmp_path):
    old = store_study(tmp_path, study_date="20200101")
    token = create_token(old).clear
    response = client.get(f"/token?{token}")
    assert response.status_code == 410
    assert "expired on 2020-02-01" in response.content.decode()


def test_a_revoked_token_is_gone_and_says_so(a_patient_with_a_token, a_study_of_today):
    client, token = a_patient_with_a_token
    a_study_of_today.tokens.get().revoke()
    response = client.get(f"/token?{token}")
    assert response.status_code == 410
    assert "revoked" in response.content.decode()
    assert client.get(reverse("portal:download", args=[a_study_of_today.pk]) + f"?{token}").status_code == 410


def test_every_token_answer_tells_the_browser_not_to_send_referrers_or_cache(a_patient_with_a_token, a_study_of_today):
    client, token = a_patient_with_a_token
    series = a_study_of_today.series.first()
    for url in (f"/token?{token}", "/token?nope", reverse("portal:preview", args=[series.pk]) + f"?{token}"):
        response = client.get(url)
        assert response["Referrer-Policy"] == "no-referrer", url
        assert "no-store" in response["Cache-Control"], url


def test_each_page_view_is_counted(a_patient_with_a_token, a_study_of_today):
    client, token = a_patient_with_a_token
    client.get(f"/token?{token}")
    client.get(f"/token?{token}")
    row = a_study_of_today.tokens.get()
    assert row.use_count == 2 and row.last_used_at is not None


def test_a_stranger_guessing_tokens_is_stopped_after_the_limit(client, a_study_of_today, settings):
    settings.PACS_TOKEN_LOOKUPS_PER_MINUTE = 5
    statuses = [client.get(f"/token?guess{i:059d}").status_code for i in range(7)]
    assert statuses == [404] * 5 + [429, 429]
    response = client.get(f"/token?{create_token(a_study_of_today).clear}")
    assert response.status_code == 429 and response["Retry-After"] == "60"


def test_the_limit_is_per_client_address(client, a_study_of_today, settings):
    settings.PACS_TOKEN_LOOKUPS_PER_MINUTE = 2
    for _ in range(3):
        client.get("/token?nope", REMOTE_ADDR="192.0.2.1")
    token = create_token(a_study_of_today).clear
    assert client.get(f"/token?{token}", REMOTE_ADDR="192.0.2.1").status_code == 429
    assert client.get(f"/token?{token}", REMOTE_ADDR="192.0.2.2").status_code == 200


def test_the_limit_counts_an_ipv6_client_by_its_64_bit_network(client, a_study_of_today, settings):
    settings.PACS_TOKEN_LOOKUPS_PER_MINUTE = 2
    for host in ("::1", "::2", "::3"):  # one machine can use every address of its /64
        client.get("/token?nope", REMOTE_ADDR=f"2001:db8:1:1{host}")
    token = create_token(a_study_of_today).clear
    assert client.get(f"/token?{token}", REMOTE_ADDR="2001:db8:1:1::99").status_code == 429
    assert client.get(f"/token?{token}", REMOTE_ADDR="2001:db8:1:2::1").status_code == 200
    assert client.get(f"/token?{token}", REMOTE_ADDR="::ffff:192.0.2.9").status_code == 200


def test_previews_of_an_opened_page_do_not_use_up_the_limit(a_patient_with_a_token, a_study_of_today, settings):
    settings.PACS_TOKEN_LOOKUPS_PER_MINUTE = 2
    client, token = a_patient_with_a_token
    assert client.get(f"/token?{token}").status_code == 200
    for _ in range(5):
        for series in a_study_of_today.series.all():
            assert client.get(reverse("portal:preview", args=[series.pk]) + f"?{token}").status_code == 200


def test_a_series_preview_is_a_png_image(a_patient_with_a_token, a_study_of_today, data_dir):
    client, token = a_patient_with_a_token
    series = a_study_of_today.series.first()
    response = client.get(reverse("portal:preview", args=[series.pk]) + f"?{token}")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (64, 64)  # make_ct's size: already small, not enlarged
    assert list((data_dir / "cache" / "previews").glob("*/*.png"))


def test_a_preview_needs_a_token_for_that_series(a_patient_with_a_token, a_study_of_today, tmp_path):
    client, token = a_patient_with_a_token
    other = store_study(tmp_path, patient_id="OTHER").series.first()
    assert client.get(reverse("portal:preview", args=[other.pk]) + f"?{token}").status_code == 404
    mine = a_study_of_today.series.first()
    assert client.get(reverse("portal:preview", args=[mine.pk]) + "?wrongtoken").status_code == 404


def download(client, study, token):
    response = client.get(reverse("portal:download", args=[study.pk]) + f"?{token}")
    assert response.status_code == 200, response
    assert response["Content-Type"] == "application/zip"
    assert response.streaming
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_the_download_is_a_file_set_whose_dicomdir_lists_every_instance(a_patient_with_a_token, a_study_of_today):
    client, token = a_patient_with_a_token
    archive = download(client, a_study_of_today, token)

    dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
    records = [r for r in dicomdir.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    expected = {i.sop_instance_uid for s in a_study_of_today.series.all() for i in s.instances.all()}
    assert {r.ReferencedSOPInstanceUIDInFile for r in records} == expected
    assert len(expected) == 6
    stored = {i.sop_instance_uid: i.path for s in a_study_of_today.series.all() for i in s.instances.all()}
    for record in records:
        name = "/".join(record.ReferencedFileID)
        assert archive.read(name) == stored[record.ReferencedSOPInstanceUIDInFile].read_bytes()


def test_the_download_holds_only_the_dicomdir_and_the_instances(a_patient_with_a_token, a_study_of_today):
    client, token = a_patient_with_a_token
    names = download(client, a_study_of_today, token).namelist()
    assert names[0] == "DICOMDIR" and len(names) == 7
    assert all(n == "DICOMDIR" or n.startswith("PT000000/ST000000/SE00000") for n in names)


def test_a_study_outside_the_token_cannot_be_downloaded(a_patient_with_a_token, tmp_path):
    client, token = a_patient_with_a_token
    other = store_study(tmp_path, patient_id="OTHER")
    assert client.get(reverse("portal:download", args=[other.pk]) + f"?{token}").status_code == 404


def test_tokens_never_reach_the_log(a_patient_with_a_token, a_study_of_today, caplog):
    client, token = a_patient_with_a_token
    caplog.set_level(logging.DEBUG)
    client.get(f"/token?{token}")
    client.get(f"/token?{token[:-2]}zz")
    a_study_of_today.tokens.update(expires_at=timezone.now() - dt.timedelta(days=1))
    client.get(f"/token?{token}")
    assert caplog.records  # Django logged the 404 and the 410 ...
    assert token not in caplog.text and token[:-2] not in caplog.text  # ... by path only


def test_the_zip_is_written_in_small_pieces_whatever_the_file_size(tmp_path):
    from portal.download import BLOCK, FileSetPlan, zip_chunks

    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (12 * 1024 * 1024 // 256))  # 12 MiB
    chunks = list(zip_chunks(FileSetPlan(b"DICOMDIR bytes", [("PT000000/IM000000", big)])))

    assert max(len(c) for c in chunks) <= BLOCK + 1024
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.read("PT000000/IM000000") == big.read_bytes()
    assert archive.read("DICOMDIR") == b"DICOMDIR bytes"


def test_a_stored_file_gone_missing_is_left_out_of_the_download(a_patient_with_a_token, a_study_of_today):
    client, token = a_patient_with_a_token
    lost = a_study_of_today.series.first().instances.first()
    lost.path.unlink()
    archive = download(client, a_study_of_today, token)
    dicomdir = pydicom.dcmread(io.BytesIO(archive.read("DICOMDIR")))
    listed = {r.ReferencedSOPInstanceUIDInFile for r in dicomdir.DirectoryRecordSequence if "ReferencedFileID" in r}
    assert len(listed) == 5 and lost.sop_instance_uid not in listed
    assert len(archive.namelist()) == 6
