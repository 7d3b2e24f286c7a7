"""Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb) as a client of our
DICOMweb server: it queries us (QIDO-RS), retrieves a study from us
(WADO-RS) and stores one to us (STOW-RS), driven through its REST API
(`/dicom-web/servers/ours/…`), with a staff API token in its HttpHeaders.

Personas: Orthanc (another archive), `a_stower` (the account it uses).
"""

import io
import json
import urllib.request

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnodes.models import Instance
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.dicomweb_site import STORE, running_web, staff_with_token
from tests.support.orthanc import start_orthanc, stop_orthanc
from tests.support.portal import index_files
from tests.support.processes import wait_until


@pytest.fixture
def ours_and_orthanc(transactional_db, data_dir, tmp_path, django_user_model):
    """(our base URL, an Orthanc that knows us as DICOMweb server "ours")."""
    _user, key = staff_with_token(django_user_model, "orthanc", codenames=STORE)
    with running_web(data_dir, tmp_path / "runpacs.log") as (base, _web):
        servers = {"ours": {"Url": f"{base}/dicomweb/", "HttpHeaders": {"Authorization": f"Token {key}"}}}
        orthanc = start_orthanc(tmp_path / "orthanc", dicomweb_servers=servers)
        try:
            yield base, orthanc
        finally:
            stop_orthanc(orthanc)


def dataset_after_meta(raw):
    fp = io.BytesIO(raw)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return raw[fp.tell() :]


def test_orthanc_stores_an_instance_to_us_with_stow(ours_and_orthanc, data_dir, tmp_path):
    _base, orthanc = ours_and_orthanc
    raw = make_ct(tmp_path / "ct.dcm").read_bytes()
    request = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}/instances", data=raw, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        orthanc_id = json.loads(response.read())["ID"]
    sop_uid = pydicom.dcmread(io.BytesIO(raw)).SOPInstanceUID

    orthanc.post("/dicom-web/servers/ours/stow", {"Resources": [orthanc_id], "Synchronous": True})

    stored = Instance.objects.get(sop_instance_uid=sop_uid)
    assert stored.calling_ae == "orthanc"
    [path] = (data_dir / "storage").glob("*/*/*")
    assert dataset_after_meta(path.read_bytes()) == dataset_after_meta(orthanc.get(f"/instances/{orthanc_id}/file"))


def test_orthanc_finds_a_study_of_ours_with_qido(ours_and_orthanc, tmp_path):
    _base, orthanc = ours_and_orthanc
    study_uid = generate_uid()
    index_files(make_ct_series(tmp_path / "study", 2, study_uid=study_uid, patient_id="QIDO1"))
    index_files(make_ct_series(tmp_path / "other", 1, patient_id="OTHER"))

    answers = orthanc.post("/dicom-web/servers/ours/qido", {"Uri": "/studies", "Arguments": {"PatientID": "QIDO1"}})

    # Orthanc answers its own simplified JSON: one "Value" string per tag.
    assert [(a["0020000D"]["Value"], a["00100020"]["Value"]) for a in answers] == [(study_uid, "QIDO1")]


def test_orthanc_retrieves_a_study_of_ours_with_wado(ours_and_orthanc, tmp_path):
    _base, orthanc = ours_and_orthanc
    study_uid = generate_uid()
    paths = make_ct_series(tmp_path / "study", 3, study_uid=study_uid)
    index_files(paths)
    sent = {pydicom.dcmread(p).SOPInstanceUID: dataset_after_meta(p.read_bytes()) for p in paths}

    orthanc.post("/dicom-web/servers/ours/retrieve", {"Resources": [{"Study": study_uid}]})

    wait_until(lambda: orthanc.count_instances() == 3, 20, message="Orthanc to hold the study")
    received = {uid: dataset_after_meta(raw) for uid, raw in orthanc.instance_files().items()}
    assert received == sent
