"""`manage.py doctor`: the disk, the database and the listeners, and its exit status."""

import subprocess
import sys

import pytest

from dicomnodes.models import ArchiveSettings, DicomServerSettings
from portal.models import HttpSettings
from tests.support.processes import BASE_DIR, free_port, server_env
from worklist.models import WorklistSettings


def doctor(data_dir):
    """(exit status, output) of `manage.py doctor` run as an operator would."""
    proc = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "doctor"],
        cwd=BASE_DIR,
        env=server_env(data_dir, PACS_WEB_PORT="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def listeners_off(transactional_db):
    """Every listener switched off (port 0): nothing is expected to listen."""
    DicomServerSettings.objects.update_or_create(pk=1, defaults={"port": 0})
    WorklistSettings.objects.update_or_create(pk=1, defaults={"hl7_port": 0})
    HttpSettings.objects.update_or_create(pk=1, defaults={"web_port": 0})
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 1, "min_free_percent": 0})


def test_a_healthy_server_passes_every_check(listeners_off, data_dir):
    status, output = doctor(data_dir)
    assert status == 0, output
    assert "OK    reachable" in output
    assert "OK    every migration applied" in output
    assert "the minimum is 1.0 MB" in output
    assert "DISABLED" in output
    assert "All checks passed." in output


def test_a_listener_that_does_not_run_and_a_full_disk_are_problems(listeners_off, data_dir, start_scp):
    scp = start_scp()  # the DICOM port is held by our runscp: fine
    WorklistSettings.objects.filter(pk=1).update(hl7_port=free_port())
    ArchiveSettings.objects.filter(pk=1).update(min_free_mb=2**40)

    status, output = doctor(data_dir)

    assert status == 1, output
    assert f"OK    DICOM (runscp)   port {scp.port:<5}  OURS" in output
    assert "FAIL  HL7 (runmllp)" in output
    assert "stores are refused (disk guard)" in output
    assert "PROBLEM: storage volume under its minimum" in output
    assert "CommandError: 2 problem(s) found" in output
