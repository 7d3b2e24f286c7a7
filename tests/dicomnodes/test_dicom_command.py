"""`manage.py dicom echo|find`: us as a client, against Orthanc as the remote PACS."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from dicomnodes.models import DicomServerSettings, Peer
from tests.support.dicomdata import make_ct_series
from tests.support.orthanc import start_orthanc, stop_orthanc
from tests.support.processes import dcmtk, free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def orthanc_with_two_studies_for_find(tmp_path, db):
    """Orthanc with two studies, knowing us (AE PACS) so that it answers our C-FIND."""
    server = start_orthanc(tmp_path / "orthanc", modalities={"pacs": ["PACS", "127.0.0.1", 11112]})
    make_ct_series(tmp_path / "a", 2, patient_id="P1", patient_name="Smith^John", accession="ACC1")
    make_ct_series(
        tmp_path / "b", 1, patient_id="P2", patient_name="Jones^Ann", accession="ACC2", study_date="20250101"
    )
    for folder in ("a", "b"):
        result = dcmtk("storescu", "-aec", server.aet, "127.0.0.1", server.dicom_port, "+sd", tmp_path / folder)
        assert result.returncode == 0, result.stderr
    Peer.objects.create(name="orthanc", ae_title=server.aet, host="127.0.0.1", port=server.dicom_port)
    yield server
    stop_orthanc(server)


def run(*args):
    out = StringIO()
    summary = call_command("dicom", *args, stdout=out)
    return summary, out.getvalue()


def test_echo_a_peer(orthanc_with_two_studies_for_find):
    summary, _ = run("echo", "orthanc")
    assert "echo OK" in summary


def test_echo_a_peer_that_is_down_fails(db):
    Peer.objects.create(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    with pytest.raises(CommandError, match="connection refused"):
        run("echo", "down")


def test_find_by_patient_id(orthanc_with_two_studies_for_find):
    summary, output = run("find", "orthanc", "--patient-id", "P1")
    assert summary == "1 studies"
    assert "Smith^John" in output and "ACC1" in output and "Jones" not in output


def test_find_by_date_range(orthanc_with_two_studies_for_find):
    summary, output = run("find", "orthanc", "--date", "20250101-20251231")
    assert summary == "1 studies"
    assert "ACC2" in output


def test_find_as_an_unknown_ae_is_refused(orthanc_with_two_studies_for_find):
    row = DicomServerSettings.load()
    row.ae_title = "NOTKNOWN"
    row.save()
    with pytest.raises(CommandError) as refused:
        run("find", "orthanc", "--patient-id", "P1")
    assert "aborted the association" in str(refused.value) or "rejected" in str(refused.value)


def test_an_unknown_peer_name_is_a_clear_error(db):
    with pytest.raises(CommandError, match="no peer named 'nobody'"):
        run("echo", "nobody")
