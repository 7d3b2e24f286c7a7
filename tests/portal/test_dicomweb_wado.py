"""WADO-RS and WADO-URI against the real web process (`manage.py runpacs
--only web`), with the reference client `dicomweb-client` where it has a call
for the resource and plain `requests` where the test is about the HTTP.

Personas: a reader (staff with the view permissions, API token), a patient
with a link to study A, a stranger (no credentials).
"""

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.contrib.auth.models import Permission, User
from django.test import override_settings
from django.utils import timezone
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from rest_framework.authtoken.models import Token

from dicomnodes.models import DicomServerSettings
from portal.models import HttpSettings
from portal.tokens import create_token
from tests.conftest import flush_database
from tests.support.archive import archive_files
from tests.support.dicomdata import fresh_copy, make_ct, make_ct_series
from tests.support.multiframe import multiframe_header, write_native
from tests.support.portal import start_runpacs_web, wait_for_web
from tests.support.processes import free_port

# The module's data is committed once by `archive` (outside any test's
# transaction); the mark makes pytest-django set up the test database.
pytestmark = pytest.mark.django_db

ELE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@dataclass
class Archive:
    base: str  # http://127.0.0.1:port
    api_token: str
    link: str  # a patient link's token, to study A
    study: str  # study A
    other_study: str  # study B, outside the link
    ct: list  # Instance rows of study A's first CT series
    multiframe: object  # an uncompressed 3-frame instance of study A
    jpeg: object  # a JPEG baseline instance of study A
    other: object  # the instance of study B
    frames: list  # the multiframe's frames as bytes

    def staff(self, root="/dicomweb"):
        session = requests.Session()
        session.headers["Authorization"] = f"Token {self.api_token}"
        return DICOMwebClient(self.base + root, session=session)

    def patient(self):
        return DICOMwebClient(f"{self.base}/dicomweb/t/{self.link}", session=requests.Session())

    def get(self, path, *, accept=None, auth=True, **params):
        headers = {"Authorization": f"Token {self.api_token}"} if auth else {}
        if accept:
            headers["Accept"] = accept
        return requests.get(self.base + path, headers=headers, params=params, timeout=30)


def uids(instance):
    return instance.series.study.study_instance_uid, instance.series.series_instance_uid, instance.sop_instance_uid


def instance_path(instance):
    study, series, sop = uids(instance)
    return f"/studies/{study}/series/{series}/instances/{sop}"


@pytest.fixture(scope="module")
def archive(django_db_setup, django_db_blocker, tmp_path_factory):
    """Study A (two CT series, an uncompressed 3-frame image, a JPEG image)
    and study B of another patient, stored and indexed as runscp does; a
    running web process; a reader's API token and a patient link to A."""
    root = tmp_path_factory.mktemp("wado")
    data, made = root / "data", root / "made"
    data.mkdir()
    folders = dict(PACS_DATA_DIR=data, PACS_STORAGE_DIR=data / "storage", PACS_QUARANTINE_DIR=data / "quarantine")
    with override_settings(**folders, PACS_LOG_DIR=data / "logs"), django_db_blocker.unblock():
        study = pydicom.uid.generate_uid()
        ct = archive_files(make_ct_series(made / "s1", 3, study_uid=study, series_number=1))
        archive_files(make_ct_series(made / "s2", 2, study_uid=study, series_number=2))
        frames = [np.full((16, 24), 100 * (n + 1), np.uint16).tobytes() for n in range(3)]
        header = multiframe_header(rows=16, columns=24, frames=3, study_uid=study, series_number=3, PatientID="PAT001")
        (multiframe,) = archive_files([write_native(made / "mf.dcm", header, frames)])
        jpeg_file = fresh_copy("SC_rgb_jpeg_dcmtk.dcm", made / "jpeg.dcm", StudyInstanceUID=study, PatientID="PAT001")
        (jpeg,) = archive_files([jpeg_file])
        (other,) = archive_files([make_ct(made / "b.dcm", patient_id="PAT002", patient_name="Roe^Rick")])
        DicomServerSettings.load().save()  # the row exists: the web process only reads it
        http = HttpSettings.load()
        http.web_port = port = free_port()
        http.save()
        reader = User.objects.create_user("wadoreader", password=None, is_staff=True)
        reader.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
        link = create_token(ct[0].series.study)
        link.row.expires_at = timezone.now() + dt.timedelta(days=1)
        link.row.save()
        web = start_runpacs_web(data, root / "runpacs.log")
        try:
            wait_for_web(f"http://127.0.0.1:{port}/admin/login/", web)
            yield Archive(
                f"http://127.0.0.1:{port}",
                Token.objects.create(user=reader).key,
                link.clear,
                study,
                other.series.study.study_instance_uid,
                ct,
                multiframe,
                jpeg,
                other,
                frames,
            )
        finally:
            web.stop()
    flush_database(django_db_blocker)


def stored_dataset(instance):
    return pydicom.dcmread(instance.path)


def parts(response):
    """(part headers, part bytes) of a multipart/related answer."""
    boundary = response.headers["Content-Type"].split("boundary=")[1].strip('"').encode()
    body = response.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    found = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        found.append((head.decode().strip(), data[:-2] if data.endswith(b"\r\n") else data))
    return found


# --- retrieve -----------------------------------------------------------------------


def test_a_study_comes_back_whole_and_as_stored(archive):
    datasets = archive.staff().retrieve_study(archive.study)
    stored = {i.sop_instance_uid: stored_dataset(i) for i in archive.ct}
    assert len(datasets) == 3 + 2 + 1 + 1
    for ds in datasets:
        if ds.SOPInstanceUID in stored:
            assert ds == stored[ds.SOPInstanceUID]
    others = {archive.jpeg.sop_instance_uid, archive.multiframe.sop_instance_uid}
    assert {ds.SOPInstanceUID for ds in datasets} >= others


def test_series_and_instance_parts_are_the_stored_files_byte_for_byte(archive):
    study, series, _ = uids(archive.ct[0])
    response = archive.get(f"/dicomweb/studies/{study}/series/{series}")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    got = parts(response)
    assert [data for _, data in got] == [i.path.read_bytes() for i in archive.ct]
    assert all(f"transfer-syntax={ELE}" in head for head, _ in got)
    jpeg = archive.staff().retrieve_instance(*uids(archive.jpeg))
    assert jpeg.file_meta.TransferSyntaxUID == JPEG_BASELINE
    assert jpeg.PixelData == stored_dataset(archive.jpeg).PixelData


def test_accept_headers_are_read_with_q_values_and_unquoted_types(archive):
    accept = "application/json;q=0.2, multipart/related; type=application/dicom; transfer-syntax=*; q=0.9"
    response = archive.get("/dicomweb" + instance_path(archive.jpeg), accept=accept)
    assert response.status_code == 200
    ((head, data),) = parts(response)
    assert f"transfer-syntax={JPEG_BASELINE}" in head
    assert data == archive.jpeg.path.read_bytes()


def test_a_compressed_instance_is_converted_when_little_endian_is_asked_for(archive):
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ELE}'
    response = archive.get("/dicomweb" + instance_path(archive.jpeg), accept=accept)
    ((head, data),) = parts(response)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == ELE
    assert ds.pixel_array.tobytes() == pixel_array(str(archive.jpeg.path)).tobytes()


def test_a_syntax_we_cannot_give_is_406(archive):
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'
    assert archive.get("/dicomweb" + instance_path(archive.ct[0]), accept=accept).status_code == 406
    assert archive.get("/dicomweb" + instance_path(archive.ct[0]), accept="text/html").status_code == 406


# --- metadata and bulk data ----------------------------------------------------------------


# dicomweb-client sends `Host` without the port (web.py: headers['Host'] =
# self.host), so a BulkDataURI built from its request names port 80: the
# metadata whose URIs are followed is fetched with plain requests here.


def test_metadata_points_to_bulk_data_that_resolves(archive):
    client = archive.staff()
    study, series, _ = uids(archive.ct[0])
    assert len(client.retrieve_series_metadata(study, series)) == 3
    response = archive.get(f"/dicomweb/studies/{study}/series/{series}/metadata")
    assert response.headers["Content-Type"] == "application/dicom+json"
    metadata = response.json()
    assert [m["00080018"]["Value"][0] for m in metadata] == [i.sop_instance_uid for i in archive.ct]
    first = metadata[0]
    assert first["00100020"]["Value"] == ["PAT001"]
    assert first["00083002"]["Value"] == [ELE]
    uri = first["7FE00010"]["BulkDataURI"]
    assert uri.startswith(archive.base + "/dicomweb/studies/")
    assert client.retrieve_bulkdata(uri) == [stored_dataset(archive.ct[0]).PixelData]


def test_study_metadata_lists_every_instance_and_compressed_pixels_resolve_to_frames(archive):
    client = archive.staff()
    assert len(client.retrieve_study_metadata(archive.study)) == 7
    metadata = archive.get(f"/dicomweb/studies/{archive.study}/metadata").json()
    (jpeg,) = [m for m in metadata if m["00080018"]["Value"] == [archive.jpeg.sop_instance_uid]]
    frames = client.retrieve_bulkdata(jpeg["7FE00010"]["BulkDataURI"], media_types=("image/jpeg",))
    stored = next(generate_frames(stored_dataset(archive.jpeg).PixelData, number_of_frames=1))
    assert frames == [stored]


def test_a_links_metadata_points_under_the_links_root(archive):
    client = archive.patient()
    instance = client.retrieve_instance_metadata(*uids(archive.ct[0]))
    assert instance["00080018"]["Value"] == [archive.ct[0].sop_instance_uid]
    url = f"{archive.base}/dicomweb/t/{archive.link}{instance_path(archive.ct[0])}/metadata"
    (metadata,) = requests.get(url, timeout=30).json()
    uri = metadata["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{archive.base}/dicomweb/t/{archive.link}/studies/")
    assert client.retrieve_bulkdata(uri) == [stored_dataset(archive.ct[0]).PixelData]


# --- frames -------------------------------------------------------------------------------


def test_frame_2_of_an_uncompressed_multiframe_is_its_bytes(archive):
    client = archive.staff()
    assert client.retrieve_instance_frames(*uids(archive.multiframe), frame_numbers=[2]) == [archive.frames[1]]
    got = client.retrieve_instance_frames(*uids(archive.multiframe), frame_numbers=[3, 1])
    assert got == [archive.frames[2], archive.frames[0]]


def test_a_frame_beyond_the_last_is_404(archive):
    response = archive.get("/dicomweb" + instance_path(archive.multiframe) + "/frames/4")
    assert response.status_code == 404


def test_a_jpeg_frame_comes_as_stored_when_asked_for_and_decoded_otherwise(archive):
    client = archive.staff()
    stored = next(generate_frames(stored_dataset(archive.jpeg).PixelData, number_of_frames=1))
    jpeg = client.retrieve_instance_frames(*uids(archive.jpeg), frame_numbers=[1], media_types=("image/jpeg",))
    assert jpeg == [stored]
    assert jpeg[0].startswith(b"\xff\xd8")
    decoded = client.retrieve_instance_frames(*uids(archive.jpeg), frame_numbers=[1])
    assert decoded == [pixel_array(str(archive.jpeg.path)).tobytes()]


def test_ohifs_accept_header_gets_the_stored_frame_labelled_with_its_syntax(archive):
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    response = archive.get("/dicomweb" + instance_path(archive.jpeg) + "/frames/1", accept=accept)
    ((head, data),) = parts(response)
    assert f"application/octet-stream; transfer-syntax={JPEG_BASELINE}" in head
    assert data.startswith(b"\xff\xd8")


# --- rendered -----------------------------------------------------------------------------


def test_an_instance_renders_as_jpeg_and_png(archive):
    client = archive.staff()
    jpeg = client.retrieve_instance_rendered(*uids(archive.ct[0]), media_types=("image/jpeg",))
    png = client.retrieve_instance_rendered(*uids(archive.jpeg), media_types=("image/png",))
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.mode) == ("PNG", "RGB")
    assert image.size == (int(stored_dataset(archive.jpeg).Columns), int(stored_dataset(archive.jpeg).Rows))


def test_a_frame_renders_with_the_window_asked_for(archive):
    path = "/dicomweb" + instance_path(archive.multiframe)
    dark = archive.get(f"{path}/frames/1/rendered", accept="image/png", window="1000,200,linear")
    bright = archive.get(f"{path}/frames/3/rendered", accept="image/png", window="0,200,linear")
    assert set(np.asarray(Image.open(io.BytesIO(dark.content))).ravel()) == {0}
    assert set(np.asarray(Image.open(io.BytesIO(bright.content))).ravel()) == {255}


def test_series_and_study_thumbnails_are_small_images(archive):
    study, series, _ = uids(archive.ct[0])
    for path in (f"/dicomweb/studies/{study}/thumbnail", f"/dicomweb/studies/{study}/series/{series}/thumbnail"):
        response = archive.get(path, accept="image/png, image/jpeg;q=0.5")
        assert response.headers["Content-Type"] == "image/png"
        assert max(Image.open(io.BytesIO(response.content)).size) <= 256
    rendered = archive.get(f"/dicomweb/studies/{study}/series/{series}/rendered", viewport="32,32")
    assert Image.open(io.BytesIO(rendered.content)).size == (32, 32)


# --- WADO-URI -------------------------------------------------------------------------------


def wado_params(instance, **extra):
    study, series, sop = uids(instance)
    return dict(requestType="WADO", studyUID=study, seriesUID=series, objectUID=sop, **extra)


def test_wado_uri_gives_the_stored_file_or_a_rendering(archive):
    dicom = archive.get("/wado", **wado_params(archive.jpeg, contentType="application/dicom"))
    assert dicom.headers["Content-Type"] == "application/dicom"
    assert dicom.content == archive.jpeg.path.read_bytes()
    image = archive.get("/dicomweb/wado", **wado_params(archive.ct[0]))
    assert image.headers["Content-Type"] == "image/jpeg"
    png = archive.get("/wado", **wado_params(archive.multiframe, contentType="image/png", frameNumber=2, rows=8))
    assert Image.open(io.BytesIO(png.content)).size == (12, 8)


def test_wado_uri_converts_to_little_endian_when_asked(archive):
    params = wado_params(archive.jpeg, contentType="application/dicom", transferSyntax=ELE)
    ds = pydicom.dcmread(io.BytesIO(archive.get("/wado", **params).content))
    assert ds.file_meta.TransferSyntaxUID == ELE


def test_wado_uri_refuses_what_it_cannot_do(archive):
    assert archive.get("/wado", **wado_params(archive.ct[0], anonymize="yes")).status_code == 400
    assert archive.get("/wado", studyUID=archive.study).status_code == 400
    assert archive.get("/wado", **wado_params(archive.ct[0], contentType="video/mp4")).status_code == 406


# --- scope and access ----------------------------------------------------------------------


def test_a_link_reaches_its_study(archive):
    client = archive.patient()
    assert len(client.retrieve_study(archive.study)) == 7
    response = requests.get(
        f"{archive.base}/dicomweb/t/{archive.link}/wado", params=wado_params(archive.ct[0]), timeout=30
    )
    assert response.status_code == 200


OUTSIDE = [
    "",
    "/metadata",
    "/rendered",
    "/thumbnail",
    "/frames/1",
    "/frames/1/rendered",
    "/bulkdata/7FE00010",
]


@pytest.mark.parametrize("resource", OUTSIDE)
def test_a_link_cannot_reach_another_study(archive, resource):
    root = f"{archive.base}/dicomweb/t/{archive.link}"
    response = requests.get(root + instance_path(archive.other) + resource, timeout=30)
    assert response.status_code == 404
    assert archive.other.sop_instance_uid.encode() not in response.content
    study = requests.get(f"{root}/studies/{archive.other_study}", timeout=30)
    assert study.status_code == 404
    wado = requests.get(f"{root}/wado", params=wado_params(archive.other), timeout=30)
    assert wado.status_code == 404


def test_the_same_instance_is_there_for_staff(archive):
    assert archive.get("/dicomweb" + instance_path(archive.other) + "/metadata").status_code == 200


@pytest.mark.parametrize("path", ["/dicomweb/studies/{study}", "/dicomweb/studies/{study}/metadata", "/wado"])
def test_a_stranger_gets_401(archive, path):
    response = archive.get(path.format(study=archive.study), auth=False, **wado_params(archive.ct[0]))
    assert response.status_code == 401


def test_a_study_sent_as_stored_says_its_length_and_a_head_request_gets_no_body(archive):
    """Stored files go out with a Content-Length counted before the answer
    starts (the web process sends them with sendfile, a test of
    test_dicomweb_wado_memory.py checks a 384 MiB one byte for byte)."""
    url = f"{archive.base}/dicomweb/studies/{archive.study}"
    auth = {"Authorization": f"Token {archive.api_token}"}
    with requests.get(url, headers=auth, stream=True, timeout=30) as r:
        assert "Transfer-Encoding" not in r.headers
        body = b"".join(r.iter_content(1 << 16))
    assert int(r.headers["Content-Length"]) == len(body)
    assert len(body) > sum(Path(i.path).stat().st_size for i in archive.ct)
    head = requests.head(url, headers=auth, timeout=30)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["Content-Length"] == r.headers["Content-Length"]
    # The connection is still good for the next request after a HEAD.
    session = requests.Session()
    session.headers.update(auth)
    assert session.head(url, timeout=30).status_code == 200
    assert len(session.get(url, timeout=30).content) == len(body)
