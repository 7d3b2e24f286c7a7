"""WADO's budgets in the real web process: a JPEG image of 1.2 megapixels
against "largest decoded pixel data" = 1 MB (DICOM server settings) and
"largest previewed frame" = 1 megapixel (HTTP settings).  What would decode
above them is refused before anything is decoded; the stored bytes still go.

Persona: a reader (staff with the view permissions, API token).
"""

import io

import numpy as np
import requests
from django.contrib.auth.models import Permission
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit
from rest_framework.authtoken.models import Token

from dicomnodes.models import DicomServerSettings
from portal.models import HttpSettings
from tests.support.archive import archive_files
from tests.support.multiframe import multiframe_header
from tests.support.portal import start_runpacs_web, wait_for_web
from tests.support.processes import free_port

ROWS, COLUMNS = 1000, 1200  # 1.2 MB decoded at 8 bits


def jpeg_image(dest):
    ds = multiframe_header(rows=ROWS, columns=COLUMNS, frames=1, bits=8)
    ramp = np.tile(np.linspace(0, 255, COLUMNS, dtype=np.uint8), (ROWS, 1))
    encoded = io.BytesIO()
    Image.fromarray(ramp, mode="L").save(encoded, format="JPEG", quality=90)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([encoded.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(dest, enforce_file_format=True)
    return dest


def test_what_would_decode_above_the_budgets_is_refused_and_the_stored_bytes_still_go(
    transactional_db, data_dir, tmp_path, django_user_model
):
    (instance,) = archive_files([jpeg_image(tmp_path / "big.dcm")])
    dicom = DicomServerSettings.load()
    dicom.max_decoded_mb = 1
    dicom.save()
    http = HttpSettings.load()
    http.web_port, http.preview_max_megapixels = free_port(), 1
    http.save()
    reader = django_user_model.objects.create_user("budgetreader", password=None, is_staff=True)
    reader.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    token = Token.objects.create(user=reader).key
    series = instance.series
    base = (
        f"http://127.0.0.1:{http.web_port}/dicomweb/studies/{series.study.study_instance_uid}"
        f"/series/{series.series_instance_uid}/instances/{instance.sop_instance_uid}"
    )

    def get(path, accept):
        return requests.get(base + path, headers={"Authorization": f"Token {token}", "Accept": accept}, timeout=30)

    web = start_runpacs_web(data_dir, tmp_path / "runpacs.log")
    try:
        wait_for_web(f"http://127.0.0.1:{http.web_port}/admin/login/", web)
        converted = get("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1')
        assert converted.status_code == 406
        assert "above the limit of 1 MB" in converted.json()["error"]
        assert get("", 'multipart/related; type="application/dicom"; transfer-syntax=*').status_code == 200
        assert get("/frames/1", "multipart/related; type=application/octet-stream").status_code == 406
        assert get("/frames/1", "multipart/related; type=image/jpeg").status_code == 200
        rendered = get("/rendered", "image/jpeg")
        assert rendered.status_code == 404
        assert "too large" in rendered.json()["error"]
    finally:
        web.stop()
