"""runscp when the storage is full: A700, nothing half-written, the next instance still fits."""

import subprocess

import pydicom
import pytest

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import ArchiveSettings, Instance
from tests.support.dicomdata import make_ct
from tests.support.processes import stored_files, temp_files


@pytest.fixture
def small_storage(data_dir):
    """A 2 MiB tmpfs as the storage folder (needs the right to mount: root)."""
    storage = data_dir / "storage"
    storage.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(storage)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({result.stderr.strip() or 'not root'})")
    yield storage
    subprocess.run(["umount", "-l", str(storage)], check=False)


def test_a_full_disk_answers_a700_and_keeps_going(small_storage, start_scp, tmp_path):
    # The disk guard off: this is the path of a disk that fills anyway (test_diskguard.py has the guard).
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 0, "min_free_percent": 0})
    scp = start_scp()
    too_big = make_ct(tmp_path / "big.dcm", size=1200)  # ≈ 2.9 MB
    fits = make_ct(tmp_path / "small.dcm")
    result = scp.store(too_big, options=["-v"])
    output = result.stdout + result.stderr
    assert "Refused: OutOfResources" in output or "0xa700" in output.lower(), output
    assert Instance.objects.count() == 0
    assert temp_files(scp.data_dir) == []
    assert scp.store(fits).returncode == 0
    assert Instance.objects.count() == 1
    assert stored_files(scp.data_dir) == [instance_path(pydicom.dcmread(fits).SOPInstanceUID)]
    assert "out of disk space" in scp.log()
