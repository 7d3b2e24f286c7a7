"""STOW-RS (`portal/dicomweb/stow.py`) with the reference client,
dicomweb-client, against a running web process; C-FIND against a runscp
on the same data folder and database.

Personas: `a_stower` (staff who may view and store, by API token),
`a_viewer` (staff who may only view), a patient with a link, a stranger.
"""

import io
import urllib.parse
import uuid

import psutil
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from django.contrib.auth.models import Permission
from django.test import Client
from pydicom.uid import generate_uid

from dicomnodes.models import Instance, Patient, Peer, Study
from pacs_site.models import Event
from portal.tokens import create_token
from tests.support.dicomdata import make_ct
from tests.support.dicomweb_site import STORE, VIEW, running_web, staff_with_token, token_session
from tests.support.processes import peak_rss_mb, stored_files

FINDER = "FINDER"


@pytest.fixture
def site(transactional_db, data_dir, tmp_path):
    with running_web(data_dir, tmp_path / "runpacs.log") as (base, _web):
        yield base


@pytest.fixture
def a_stower(django_user_model):
    return staff_with_token(django_user_model, "stower", codenames=STORE)


def client_for(base, key=None, root="/dicomweb"):
    return DICOMwebClient(f"{base}{root}", session=token_session(key) if key else requests.Session())


def ct(tmp_path, **kwargs):
    return pydicom.dcmread(make_ct(tmp_path / f"{uuid.uuid4().hex}.dcm", **kwargs))


def path_of(url):
    """The path of a URL we answered (dicomweb-client sends a Host header
    without the port, and our URLs follow the Host header)."""
    assert url.startswith("http://127.0.0.1")
    return urllib.parse.urlsplit(url).path


def dataset_bytes(ds):
    """The dataset as dcmwrite encodes it, after the file meta."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    raw = buffer.getvalue()
    fp = io.BytesIO(raw)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return raw[fp.tell() :]


def stored_dataset_bytes(data_dir, sop_uid):
    [path] = [
        p for p in stored_files(data_dir) if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == sop_uid
    ]
    return dataset_bytes(pydicom.dcmread(path)), pydicom.dcmread(path, stop_before_pixels=True)


def multipart(parts, boundary="b0undary"):
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n" for p in parts
    )
    return body + b"--" + boundary.encode() + b"--\r\n"


def part10(ds):
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def test_a_study_stored_with_stow_is_in_the_index_and_found_by_c_find(site, a_stower, scp, data_dir, tmp_path):
    _user, key = a_stower
    study_uid, series_uid = generate_uid(), generate_uid()
    # More instances than stow.IN_FLIGHT: stored several at a time, answered in order.
    datasets = [ct(tmp_path, study_uid=study_uid, series_uid=series_uid, instance_number=n) for n in range(1, 7)]

    answer = client_for(site, key).store_instances(datasets)

    assert path_of(answer.RetrieveURL) == f"/dicomweb/studies/{study_uid}"
    assert "FailedSOPSequence" not in answer
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    first = answer.ReferencedSOPSequence[0]
    assert first.ReferencedSOPClassUID == datasets[0].SOPClassUID
    assert path_of(first.RetrieveURL) == (
        f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{datasets[0].SOPInstanceUID}"
    )
    rows = Instance.objects.filter(series__study__study_instance_uid=study_uid)
    assert rows.count() == 6
    assert {row.calling_ae for row in rows} == {"stower"}
    stored, header = stored_dataset_bytes(data_dir, datasets[1].SOPInstanceUID)
    assert stored == dataset_bytes(datasets[1])
    assert header.file_meta.SourceApplicationEntityTitle == "stower"
    assert Event.objects.filter(study_instance_uid=study_uid).count() == 1

    Peer.objects.create(name="finder", ae_title=FINDER, host="127.0.0.1", may_query=True)
    scp.wait_until_allowed(FINDER, "find")
    out = tmp_path / "found"
    out.mkdir()
    found = scp.qr(
        "findscu",
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={study_uid}",
        "NumberOfStudyRelatedInstances",
        calling=FINDER,
        options=["-X", "-od", out],
    )
    assert found.returncode == 0, found.stderr
    [response] = [pydicom.dcmread(p) for p in out.iterdir()]
    assert response.StudyInstanceUID == study_uid
    assert int(response.NumberOfStudyRelatedInstances) == 6


def test_a_duplicate_is_referenced_and_a_broken_instance_failed_with_202(site, a_stower, data_dir, tmp_path):
    _user, key = a_stower
    client = client_for(site, key)
    study_uid = generate_uid()
    first, other = ct(tmp_path, study_uid=study_uid), ct(tmp_path, study_uid=study_uid)
    client.store_instances([first])
    broken = ct(tmp_path)
    del broken.StudyInstanceUID  # the store path refuses it: C000, kept in quarantine

    session = token_session(key)
    body = multipart([part10(first), part10(broken), part10(other)])
    response = session.post(
        f"{site}/dicomweb/studies",
        data=body,
        headers={"Content-Type": "multipart/related; type=application/dicom; boundary=b0undary"},
    )

    assert response.status_code == 202
    assert response.headers["Content-Type"] == "application/dicom+json"
    answer = pydicom.Dataset.from_json(response.json())
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        first.SOPInstanceUID,
        other.SOPInstanceUID,
    ]
    [failed] = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == broken.SOPInstanceUID
    assert failed.FailureReason == 0xC000
    assert Instance.objects.filter(sop_instance_uid=first.SOPInstanceUID).count() == 1
    assert Instance.objects.filter(series__study__study_instance_uid=study_uid).count() == 2
    assert not Instance.objects.filter(sop_instance_uid=broken.SOPInstanceUID).exists()
    assert len(list((data_dir / "quarantine").iterdir())) == 1


def test_dicomweb_client_gets_202_with_the_failed_instance(site, a_stower, tmp_path):
    _user, key = a_stower
    good, broken = ct(tmp_path), ct(tmp_path)
    del broken.SeriesInstanceUID

    answer = client_for(site, key).store_instances([good, broken])

    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in answer.FailedSOPSequence] == [
        (broken.SOPInstanceUID, 0xC000)
    ]


def test_an_instance_of_another_study_is_refused_at_a_study_url(site, a_stower, data_dir, tmp_path):
    _user, key = a_stower
    study_uid = generate_uid()
    ours, theirs = ct(tmp_path, study_uid=study_uid), ct(tmp_path)

    answer = client_for(site, key).store_instances([ours, theirs], study_instance_uid=study_uid)

    assert path_of(answer.RetrieveURL) == f"/dicomweb/studies/{study_uid}"
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [ours.SOPInstanceUID]
    [failed] = answer.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == (theirs.SOPInstanceUID, 0xA900)
    assert not Study.objects.filter(study_instance_uid=theirs.StudyInstanceUID).exists()
    assert len(stored_files(data_dir)) == 1


def test_nothing_stored_is_409_and_a_cut_dataset_is_quarantined(site, a_stower, data_dir, tmp_path):
    _user, key = a_stower
    cut = part10(ct(tmp_path))[:-10]  # the pixel data ends early

    response = token_session(key).post(
        f"{site}/dicomweb/studies",
        data=multipart([cut], boundary="x-y"),
        headers={"Content-Type": 'multipart/related; boundary="x-y"; type="application/dicom"'},
    )

    assert response.status_code == 409
    answer = pydicom.Dataset.from_json(response.json())
    assert answer.FailedSOPSequence[0].FailureReason == 0xC000
    assert answer.ReferencedSOPSequence == []
    assert stored_files(data_dir) == []
    assert len(list((data_dir / "quarantine").iterdir())) == 1


def test_a_large_instance_is_spooled_and_stored_byte_for_byte(site, a_stower, data_dir, tmp_path):
    _user, key = a_stower
    big = ct(tmp_path)
    big.Rows = big.Columns = 1600  # 5 MB of pixels: above the 4 MB kept in memory
    big.PixelData = bytes(range(256)) * (1600 * 1600 * 2 // 256)

    answer = client_for(site, key).store_instances([big])

    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == big.SOPInstanceUID
    stored, _header = stored_dataset_bytes(data_dir, big.SOPInstanceUID)
    assert stored == dataset_bytes(big)


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("application/dicom", 415),
        ('multipart/related; type="application/dicom+json"; boundary=x', 415),
        ('multipart/related; type="application/dicom"', 400),
    ],
)
def test_a_wrong_content_type_is_refused(site, a_stower, content_type, status):
    _user, key = a_stower
    response = token_session(key).post(
        f"{site}/dicomweb/studies", data=b"--x--", headers={"Content-Type": content_type}
    )
    assert response.status_code == status


def test_a_body_that_is_not_multipart_is_400(site, a_stower):
    _user, key = a_stower
    response = token_session(key).post(
        f"{site}/dicomweb/studies",
        data=b"this is no multipart body",
        headers={"Content-Type": "multipart/related; type=application/dicom; boundary=x"},
    )
    assert response.status_code == 400


def test_who_may_not_store_is_refused(site, django_user_model, tmp_path):
    _viewer, view_key = staff_with_token(django_user_model, "viewer", codenames=VIEW)
    ds = ct(tmp_path)
    patient = Patient.objects.create(patient_id="P1", patient_name="Doe^Jane")
    existing = Study.objects.create(study_instance_uid=generate_uid(), patient_record=patient, patient_id="P1")
    link = create_token(existing)
    cases = [
        (client_for(site), 401),  # a stranger
        (client_for(site, view_key), 403),  # staff who may only view
        (client_for(site, root=f"/dicomweb/t/{link.clear}"), 403),  # a patient's link
    ]
    for client, status in cases:
        with pytest.raises(requests.HTTPError) as refused:
            client.store_instances([ds])
        assert refused.value.response.status_code == status
    assert not Instance.objects.exists()


def test_a_session_login_must_send_the_csrf_token(transactional_db, data_dir, django_user_model, tmp_path):
    user = django_user_model.objects.create_user("admin-stower", password=None, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=STORE, content_type__app_label="dicomnodes"))
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    ds = ct(tmp_path)
    body = multipart([part10(ds)])
    content_type = "multipart/related; type=application/dicom; boundary=b0undary"

    forged = browser.post("/dicomweb/studies", body, content_type=content_type)
    browser.get("/admin/")  # the admin page sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    sent = browser.post("/dicomweb/studies", body, content_type=content_type, HTTP_X_CSRFTOKEN=token)

    assert forged.status_code == 403
    assert sent.status_code == 200
    assert Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID).calling_ae == "admin-stower"


# --- The bounds (upload.MAX_PART, upload.MAX_BODY), set small for the web process.

PART_MB, BODY_MB = 2, 6
MiB = 2**20
CONTENT_TYPE = "multipart/related; type=application/dicom; boundary=b0undary"


@pytest.fixture
def bounded_site(transactional_db, data_dir, tmp_path, monkeypatch):
    """The web process with a part bound of 2 MiB and a body bound of 6 MiB
    (read from the environment when it starts); (base URL, runpacs)."""
    monkeypatch.setenv("PACS_STOW_MAX_PART_MB", str(PART_MB))
    monkeypatch.setenv("PACS_STOW_MAX_BODY_MB", str(BODY_MB))
    with running_web(data_dir, tmp_path / "runpacs.log") as (base, web):
        yield base, web


def ct_of_size(tmp_path, size, **kwargs):
    """A CT whose Part 10 file is at most `size` bytes and less than 1 KiB
    under it (rows of 512 16-bit pixels)."""
    ds = ct(tmp_path, **kwargs)
    ds.Rows, ds.Columns, ds.PixelData = 1, 512, bytes(1024)
    overhead = len(part10(ds)) - 1024
    ds.Rows = (size - overhead) // 1024
    ds.PixelData = bytes(range(256)) * (ds.Rows * 4)
    assert size - 1024 < len(part10(ds)) <= size
    return ds


def post_stow(base, key, body):
    response = token_session(key).post(f"{base}/dicomweb/studies", data=body, headers={"Content-Type": CONTENT_TYPE})
    answer = pydicom.Dataset.from_json(response.json())
    return response.status_code, answer


def found_by_qido(base, key, study_uid):
    return {ds["00080018"]["Value"][0] for ds in client_for(base, key).search_for_instances(study_uid)}


def test_a_part_above_the_bound_fails_with_a700_naming_it_and_the_others_are_stored(
    bounded_site, a_stower, data_dir, tmp_path
):
    base, _web = bounded_site
    _user, key = a_stower
    study_uid = generate_uid()
    small = ct(tmp_path, study_uid=study_uid)
    under = ct_of_size(tmp_path, PART_MB * MiB, study_uid=study_uid)  # just under the bound
    over = ct_of_size(tmp_path, PART_MB * MiB + 4096, study_uid=study_uid)
    last = ct(tmp_path, study_uid=study_uid)

    status, answer = post_stow(base, key, multipart([part10(small), part10(over), part10(under), part10(last)]))

    assert status == 202
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
        small.SOPInstanceUID,
        under.SOPInstanceUID,
        last.SOPInstanceUID,
    ]
    [failed] = answer.FailedSOPSequence
    assert failed.FailureReason == 0xA700
    assert (failed.ReferencedSOPInstanceUID, failed.ReferencedSOPClassUID) == (over.SOPInstanceUID, over.SOPClassUID)
    assert found_by_qido(base, key, study_uid) == {small.SOPInstanceUID, under.SOPInstanceUID, last.SOPInstanceUID}
    assert not Instance.objects.filter(sop_instance_uid=over.SOPInstanceUID).exists()
    assert stored_dataset_bytes(data_dir, under.SOPInstanceUID)[0] == dataset_bytes(under)
    assert len(stored_files(data_dir)) == 3
    assert not list((data_dir / "quarantine").glob("*"))  # the folder is made when needed


def test_a_body_just_under_the_bound_is_stored_whole(bounded_site, a_stower, data_dir, tmp_path):
    base, _web = bounded_site
    _user, key = a_stower
    study_uid = generate_uid()
    first, second = (ct_of_size(tmp_path, PART_MB * MiB, study_uid=study_uid) for _ in range(2))
    framing = len(multipart([part10(first), part10(second), b""]))
    third = ct_of_size(tmp_path, BODY_MB * MiB - framing, study_uid=study_uid)
    body = multipart([part10(first), part10(second), part10(third)])
    assert BODY_MB * MiB - 1024 < len(body) <= BODY_MB * MiB

    status, answer = post_stow(base, key, body)

    assert status == 200
    uids = [first.SOPInstanceUID, second.SOPInstanceUID, third.SOPInstanceUID]
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == uids
    assert found_by_qido(base, key, study_uid) == set(uids)
    assert stored_dataset_bytes(data_dir, third.SOPInstanceUID)[0] == dataset_bytes(third)


def test_a_body_above_the_bound_is_413_and_nothing_of_it_is_stored(bounded_site, a_stower, data_dir, tmp_path):
    base, _web = bounded_site
    _user, key = a_stower
    big = ct_of_size(tmp_path, BODY_MB * MiB + 8192)

    response = token_session(key).post(
        f"{base}/dicomweb/studies", data=multipart([part10(big)]), headers={"Content-Type": CONTENT_TYPE}
    )

    assert response.status_code == 413
    assert f"{BODY_MB * MiB} bytes" in response.json()["error"]
    assert not Instance.objects.exists()
    assert stored_files(data_dir) == []
    assert not list((data_dir / "quarantine").glob("*"))  # the folder is made when needed


def test_a_body_that_passes_the_bound_after_some_parts_keeps_them_and_fails_the_rest(
    bounded_site, a_stower, data_dir, tmp_path
):
    base, _web = bounded_site
    _user, key = a_stower
    study_uid = generate_uid()
    parts = [ct_of_size(tmp_path, 16 * MiB // 10, study_uid=study_uid) for _ in range(5)]  # 8 MiB in all

    status, answer = post_stow(base, key, multipart([part10(ds) for ds in parts]))

    assert status == 202
    # Three are read whole (4.8 MiB), the fourth passes 6 MiB.
    stored = [ds.SOPInstanceUID for ds in parts[:3]]
    assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == stored
    [failed] = answer.FailedSOPSequence
    assert (failed.ReferencedSOPInstanceUID, failed.FailureReason) == ("", 0xC000)
    assert found_by_qido(base, key, study_uid) == set(stored)
    assert len(stored_files(data_dir)) == 3


def test_a_body_far_above_the_bound_is_refused_without_the_web_process_holding_it(bounded_site, a_stower):
    base, web = bounded_site
    _user, key = a_stower
    (daphne,) = [p for p in psutil.Process(web.proc.pid).children() if "daphne_server" in " ".join(p.cmdline())]
    session = token_session(key)
    session.get(f"{base}/dicomweb/studies")  # the views loaded
    before = peak_rss_mb(daphne.pid)
    body = b"--b0undary\r\n\r\n" + bytes(200 * MiB) + b"\r\n--b0undary--"

    response = session.post(f"{base}/dicomweb/studies", data=body, headers={"Content-Type": CONTENT_TYPE})

    assert response.status_code == 413
    # Measured: 136 MB before, 449 after a 300 MB body when daphne queued it as
    # 8 KiB messages; portal/daphne_server.BodyQueue reads it from its file.
    assert peak_rss_mb(daphne.pid) - before < 64
