"""runscp C-MOVE and C-GET with DCMTK movescu/getscu into storescp."""

import subprocess
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnodes.models import Peer
from tests.conftest import dcmtk, free_port, port_accepts, wait_until
from tests.dicomdata import fresh_copy, make_ct_series

pytestmark = pytest.mark.archive

VIEWER = "VIEWER1"


@pytest.fixture
def storescp(tmp_path):
    """A DCMTK storescp as a move destination."""
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "-aet", "DEST", "-od", str(out), "+xa", str(port)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: port_accepts(port), 10, message="storescp")
    yield port, out
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def archive(scp, tmp_path):
    """A study of 5 CT images and one JPEG image in the running server, and a viewer peer."""
    study = generate_uid()
    make_ct_series(tmp_path / "ct", 5, study_uid=study, patient_id="P1")
    assert scp.store(tmp_path / "ct").returncode == 0
    jpeg = fresh_copy("SC_rgb_jpeg_dcmtk.dcm", tmp_path / "jpeg" / "sc.dcm", StudyInstanceUID=study, PatientID="P1")
    assert scp.store(jpeg, options=["-xy"]).returncode == 0
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True, may_retrieve=True)
    time.sleep(0.8)  # runscp reads peers on its next poll
    return study


def received(folder):
    return sorted(p for p in folder.iterdir() if p.is_file())


def test_move_sends_a_study_to_a_declared_destination(scp, archive, storescp):
    port, out = storescp
    Peer.objects.create(name="dest", ae_title="DEST", host="127.0.0.1", port=port, is_move_destination=True)
    time.sleep(0.8)
    result = dcmtk(
        "movescu",
        "-S",
        "-aet",
        VIEWER,
        "-aem",
        "DEST",
        "-aec",
        "PACS",
        "127.0.0.1",
        scp.port,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={archive}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = received(out)
    assert len(files) == 6
    syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
    assert "1.2.840.10008.1.2.4.50" in syntaxes, "the JPEG image went as stored"


def test_move_to_an_unknown_destination_is_a801_naming_it(scp, archive):
    result = dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aet",
        VIEWER,
        "-aem",
        "NOWHERE",
        "-aec",
        "PACS",
        "127.0.0.1",
        scp.port,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={archive}",
    )
    output = result.stdout + result.stderr
    assert "MoveDestinationUnknown" in output or "a801" in output.lower(), output
    assert "NOWHERE" in output


def test_get_retrieves_a_study_over_the_same_association(scp, archive, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    result = dcmtk(
        "getscu",
        "-S",
        "-aet",
        VIEWER,
        "-aec",
        "PACS",
        "127.0.0.1",
        scp.port,
        "-od",
        out,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={archive}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = received(out)
    assert len(files) == 6
    # getscu proposes uncompressed syntaxes only: the JPEG image was decompressed.
    sc = [f for f in files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "OT"]
    assert str(pydicom.dcmread(sc[0]).file_meta.TransferSyntaxUID) in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def test_an_unknown_caller_may_not_find_move_or_get(scp, archive, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    for tool, extra in (("findscu", []), ("movescu", ["-aem", VIEWER]), ("getscu", ["-od", out])):
        result = dcmtk(
            tool,
            "-v",
            "-S",
            "-aet",
            "STRANGER",
            *extra,
            "-aec",
            "PACS",
            "127.0.0.1",
            scp.port,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={archive}",
        )
        output = result.stdout + result.stderr
        if tool == "getscu":
            # getscu also proposes storage (unknown AEs may store): accepted,
            # then the C-GET itself is refused.
            assert "Unknown Status: 0x124" in output or "0124" in output, output
        else:
            assert "Calling AE Title Not Recognized" in output, output
    assert not list(out.iterdir()), "nothing was retrieved"


def test_a_peer_without_the_query_right_gets_0124_for_find(scp, archive):
    Peer.objects.create(name="store only", ae_title="STOREONLY", host="127.0.0.1", may_store=True)
    time.sleep(0.8)
    result = dcmtk(
        "findscu",
        "-v",
        "-S",
        "-aet",
        "STOREONLY",
        "-aec",
        "PACS",
        "127.0.0.1",
        scp.port,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID",
    )
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr


def test_move_into_orthanc_delivers_every_instance_intact(scp, archive, tmp_path):
    from dicomnodes.models import Instance
    from dicomnodes.storage import instance_path
    from tests.orthanc import start_orthanc, stop_orthanc
    from tests.test_runscp_store import dataset_bytes

    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"pacs": ["PACS", "127.0.0.1", scp.port]})
    try:
        Peer.objects.create(
            name="orthanc", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port, is_move_destination=True
        )
        time.sleep(0.8)
        result = dcmtk(
            "movescu",
            "-S",
            "-aet",
            VIEWER,
            "-aem",
            "ORTHANC",
            "-aec",
            "PACS",
            "127.0.0.1",
            scp.port,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={archive}",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert orthanc.count_instances() == 6
        theirs = orthanc.instance_files()
        ours = set(Instance.objects.values_list("sop_instance_uid", flat=True))
        assert set(theirs) == ours
        for uid, body in theirs.items():
            copy = tmp_path / "copy.dcm"
            copy.write_bytes(body)
            assert dataset_bytes(copy) == dataset_bytes(instance_path(uid)), f"{uid} differs"
    finally:
        stop_orthanc(orthanc)


def test_move_reports_an_instance_it_cannot_send(scp, archive, storescp):
    from dicomnodes.models import Instance
    from dicomnodes.storage import instance_path

    port, out = storescp
    Peer.objects.create(name="dest", ae_title="DEST", host="127.0.0.1", port=port, is_move_destination=True)
    lost = Instance.objects.order_by("pk").first().sop_instance_uid
    instance_path(lost).unlink()  # the file is gone from the disk
    time.sleep(0.8)
    result = dcmtk(
        "movescu",
        "-d",
        "-S",
        "-aet",
        VIEWER,
        "-aem",
        "DEST",
        "-aec",
        "PACS",
        "127.0.0.1",
        scp.port,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={archive}",
    )
    output = result.stdout + result.stderr
    assert len(received(out)) == 5
    assert "Warning" in output or "b000" in output.lower(), output
    assert lost in output, "the Failed SOP Instance UID List names it"
    assert "cannot read stored instance" in scp.log()


def test_patient_root_move_at_patient_level(scp, archive, storescp):
    port, out = storescp
    Peer.objects.create(name="dest", ae_title="DEST", host="127.0.0.1", port=port, is_move_destination=True)
    time.sleep(0.8)
    result = dcmtk(
        "movescu",
        "-P",
        "-aet",
        VIEWER,
        "-aem",
        "DEST",
        "-aec",
        "PACS",
        "127.0.0.1",
        scp.port,
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=P1",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(received(out)) == 6


def test_get_one_image(scp, archive, tmp_path):
    from dicomnodes.models import Instance

    one = Instance.objects.filter(series__study__study_instance_uid=archive).order_by("pk").first()
    out = tmp_path / "one"
    out.mkdir()
    result = dcmtk(
        "getscu",
        "-S",
        "-aet",
        VIEWER,
        "-aec",
        "PACS",
        "127.0.0.1",
        scp.port,
        "-od",
        out,
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={archive}",
        "-k",
        f"SeriesInstanceUID={one.series.series_instance_uid}",
        "-k",
        f"SOPInstanceUID={one.sop_instance_uid}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = received(out)
    assert [pydicom.dcmread(f).SOPInstanceUID for f in files] == [one.sop_instance_uid]
