"""runscp C-MOVE and C-GET with DCMTK movescu/getscu into storescp and Orthanc."""

import contextlib
import subprocess

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance, Peer
from tests.support.dicomdata import fresh_copy, make_ct_series
from tests.support.processes import free_port, port_accepts, wait_until

pytestmark = pytest.mark.archive

VIEWER = "VIEWER1"


def qr(tool, scp, *keys, calling=VIEWER, **kwargs):
    return scp.qr(tool, *keys, calling=calling, **kwargs)


def declare_destination(scp, ae_title, port):
    Peer.objects.create(name=ae_title.lower(), ae_title=ae_title, host="127.0.0.1", port=port, is_move_destination=True)
    scp.wait_for_peers()


@contextlib.contextmanager
def move_destination(scp, out, ae_title, *options):
    """A DCMTK storescp (`ae_title`, storing into `out`) declared to `scp`
    as a move destination, for the duration of the block."""
    port = free_port()
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", ae_title, "-od", str(out), *options, str(port)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: port_accepts(port), 10, message="storescp")
        declare_destination(scp, ae_title, port)
        yield out
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def storescp(shared_scp, tmp_path):
    """A DCMTK storescp (AE DEST) declared as a move destination; yields its output folder."""
    with move_destination(shared_scp, tmp_path / "received", "DEST", "+xa") as out:
        yield out


@pytest.fixture
def a_study_in_runscp(shared_scp, tmp_path):
    """A study of 5 CT images and one JPEG image in the running server, and a viewer peer."""
    study = generate_uid()
    make_ct_series(tmp_path / "ct", 5, study_uid=study, patient_id="P1")
    assert shared_scp.store(tmp_path / "ct").returncode == 0
    jpeg = fresh_copy("SC_rgb_jpeg_dcmtk.dcm", tmp_path / "jpeg" / "sc.dcm", StudyInstanceUID=study, PatientID="P1")
    assert shared_scp.store(jpeg, options=["-xy"]).returncode == 0
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True, may_retrieve=True)
    shared_scp.wait_until_allowed(VIEWER, "move")
    return study


def received(folder):
    return sorted(p for p in folder.iterdir() if p.is_file())


def study_keys(study):
    return ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}")


def test_move_sends_a_study_to_a_declared_destination(shared_scp, a_study_in_runscp, storescp):
    result = qr("movescu", shared_scp, *study_keys(a_study_in_runscp), options=["-aem", "DEST"])
    assert result.returncode == 0, result.stdout + result.stderr
    files = received(storescp)
    assert len(files) == 6
    syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    assert "1.2.840.10008.1.2.4.50" in syntaxes, "the JPEG image went as stored"


def test_move_to_an_unknown_destination_is_a801_naming_it(shared_scp, a_study_in_runscp):
    result = qr("movescu", shared_scp, *study_keys(a_study_in_runscp), options=["-d", "-aem", "NOWHERE"])
    output = result.stdout + result.stderr
    assert "MoveDestinationUnknown" in output, output
    assert "NOWHERE" in output, "the Error Comment names the AE"


def test_get_retrieves_a_study_over_the_same_association(shared_scp, a_study_in_runscp, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    result = qr("getscu", shared_scp, *study_keys(a_study_in_runscp), options=["-od", out])
    assert result.returncode == 0, result.stdout + result.stderr
    files = received(out)
    assert len(files) == 6
    # getscu proposes uncompressed syntaxes only: the JPEG image was decompressed.
    sc = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "OT"]
    assert str(pydicom.dcmread(sc[0]).file_meta.TransferSyntaxUID) in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def test_an_unknown_caller_may_not_find_move_or_get(shared_scp, a_study_in_runscp, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    for tool, options in (("findscu", []), ("movescu", ["-aem", VIEWER]), ("getscu", ["-od", out])):
        result = qr(tool, shared_scp, *study_keys(a_study_in_runscp), calling="STRANGER", options=["-v", *options])
        output = result.stdout + result.stderr
        if tool == "getscu":
            # getscu also proposes storage (unknown AEs may store): accepted,
            # then the C-GET itself is refused with 0124.
            assert "Unknown Status: 0x124" in output, output
        else:
            assert "Calling AE Title Not Recognized" in output, output
    assert not list(out.iterdir()), "nothing was retrieved"


def test_a_peer_without_the_query_right_cannot_find(shared_scp, a_study_in_runscp):
    Peer.objects.create(name="store only", ae_title="STOREONLY", host="127.0.0.1", may_store=True)
    shared_scp.wait_for_peers()
    result = qr(
        "findscu", shared_scp, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", calling="STOREONLY", options=["-v"]
    )
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr


def test_move_into_orthanc_delivers_every_instance_intact(shared_scp, a_study_in_runscp, orthanc, tmp_path):
    from tests.dicomnodes.test_runscp_store import dataset_bytes

    Peer.objects.filter(pk=orthanc.peer.pk).update(is_move_destination=True)
    shared_scp.wait_for_peers()
    result = qr("movescu", shared_scp, *study_keys(a_study_in_runscp), options=["-aem", "ORTHANC"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert orthanc.count_instances() == 6
    theirs = orthanc.instance_files()
    assert set(theirs) == set(Instance.objects.values_list("sop_instance_uid", flat=True))
    for uid, body in theirs.items():
        copy = tmp_path / "copy.dcm"
        copy.write_bytes(body)
        assert dataset_bytes(copy) == dataset_bytes(instance_path(uid)), f"{uid} differs"


def test_move_reports_an_instance_it_cannot_send(shared_scp, a_study_in_runscp, storescp):
    lost = Instance.objects.order_by("pk").first().sop_instance_uid
    instance_path(lost).unlink()  # the file is gone from the disk
    result = qr("movescu", shared_scp, *study_keys(a_study_in_runscp), options=["-d", "-aem", "DEST"])
    output = result.stdout + result.stderr
    assert len(received(storescp)) == 5
    assert "Warning" in output, output
    assert lost in output, "the Failed SOP Instance UID List names it"
    assert "cannot read stored instance" in shared_scp.log()


def test_patient_root_move_at_patient_level(shared_scp, a_study_in_runscp, storescp):
    result = qr(
        "movescu", shared_scp, "QueryRetrieveLevel=PATIENT", "PatientID=P1", root="-P", options=["-aem", "DEST"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(received(storescp)) == 6


def test_get_one_image(shared_scp, a_study_in_runscp, tmp_path):
    one = Instance.objects.filter(series__study__study_instance_uid=a_study_in_runscp).order_by("pk").first()
    out = tmp_path / "one"
    out.mkdir()
    keys = (
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={a_study_in_runscp}",
        f"SeriesInstanceUID={one.series.series_instance_uid}",
        f"SOPInstanceUID={one.sop_instance_uid}",
    )
    result = qr("getscu", shared_scp, *keys, options=["-od", out])
    assert result.returncode == 0, result.stdout + result.stderr
    assert [pydicom.dcmread(f).SOPInstanceUID for f in received(out)] == [one.sop_instance_uid]
