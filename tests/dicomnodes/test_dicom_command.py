"""`manage.py dicom echo|find`: us as a client, against Orthanc as the remote PACS."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from dicomnodes.models import DicomServerSettings, Peer
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    summary = call_command("dicom", *args, stdout=out)
    return summary, out.getvalue()


def test_echo_a_peer(orthanc_with_two_studies):
    summary, _ = run("echo", "orthanc")
    assert "echo OK" in summary


def test_echo_a_peer_that_is_down_fails(db):
    Peer.objects.create(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    with pytest.raises(CommandError, match="connection refused"):
        run("echo", "down")


def test_find_by_patient_id(orthanc_with_two_studies):
    summary, output = run("find", "orthanc", "--patient-id", "P1")
    assert summary == "1 studies"
    assert "Smith^John" in output and "ACC1" in output and "Jones" not in output


def test_find_by_date_range(orthanc_with_two_studies):
    summary, output = run("find", "orthanc", "--date", "20250101-20251231")
    assert summary == "1 studies"
    assert "ACC2" in output


def test_find_as_an_unknown_ae_is_refused(orthanc_with_two_studies):
    row = DicomServerSettings.load()
    row.ae_title = "NOTKNOWN"
    row.save()
    with pytest.raises(CommandError) as refused:
        run("find", "orthanc", "--patient-id", "P1")
    assert "aborted the association" in str(refused.value) or "rejected" in str(refused.value)


def test_an_unknown_peer_name_is_a_clear_error(db):
    with pytest.raises(CommandError, match="no peer named 'nobody'"):
        run("echo", "nobody")
