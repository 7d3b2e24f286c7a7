"""Orphan files (written, never indexed) are indexed when runscp starts; the
scan at start is bounded (dicomnodes/archive/reconcile.py)."""

import os
import shutil
import time

import pydicom
import pytest

from dicomnodes.archive.reconcile import index_orphans
from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance, Study
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.processes import wait_until


def leave_orphan(src):
    """What a kill between the write and the commit leaves: the file in
    storage, no row.  Returns its SOP Instance UID."""
    uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    target = instance_path(uid)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, target)
    return uid


def age(path, seconds):
    """Make a stored file and its two folders look `seconds` old."""
    then = time.time() - seconds
    for p in (path, path.parent, path.parent.parent):
        os.utime(p, (then, then))


def test_runscp_indexes_at_start_the_files_a_kill_left_without_rows(start_scp, tmp_path):
    scp = start_scp()
    make_ct_series(tmp_path / "sent", 2, patient_id="P1")
    assert scp.store(tmp_path / "sent").returncode == 0
    scp.stop()
    study_uid = Study.objects.get().study_instance_uid
    orphan = leave_orphan(make_ct(tmp_path / "orphan.dcm", study_uid=study_uid, patient_id="P1"))

    again = start_scp()
    wait_until(lambda: Instance.objects.filter(sop_instance_uid=orphan).exists(), message="the orphan's row")
    assert "indexed 1 stored files that had no index row" in again.log()
    assert Instance.objects.count() == 3
    assert Study.objects.get().num_instances == 3

    again.stop()
    third = start_scp()
    assert third.echo().returncode == 0  # it is up: its start is over
    assert Instance.objects.filter(sop_instance_uid=orphan).count() == 1
    assert Instance.objects.count() == 3
    assert "had no index row" not in third.log()


@pytest.mark.django_db
def test_the_scan_at_start_skips_folders_older_than_the_newest_row(data_dir, tmp_path):
    archive_files([make_ct(tmp_path / "indexed.dcm")])
    old = leave_orphan(make_ct(tmp_path / "old.dcm"))
    age(instance_path(old), 86400)
    recent = leave_orphan(make_ct(tmp_path / "recent.dcm"))

    scan = index_orphans()

    assert (scan.indexed, scan.truncated) == (1, False)
    assert Instance.objects.filter(sop_instance_uid=recent).exists()
    assert not Instance.objects.filter(sop_instance_uid=old).exists()  # left to `manage.py reindex`


@pytest.mark.django_db
def test_the_scan_at_start_reads_at_most_its_limit_and_says_so(data_dir, tmp_path, caplog):
    for i in range(3):
        leave_orphan(make_ct(tmp_path / f"o{i}.dcm"))

    scan = index_orphans(limit=2)

    assert (scan.indexed, scan.truncated) == (2, True)
    assert Instance.objects.count() == 2
    assert "run `manage.py reindex`" in caplog.text
    assert index_orphans(limit=2).indexed == 1  # the next start takes the rest


@pytest.mark.django_db
def test_the_scan_at_start_leaves_files_that_are_not_instances(data_dir, tmp_path):
    stray = data_dir / "storage" / "ab" / "cd" / ("ab" + "cd" + "0" * 60)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not DICOM")
    misplaced = make_ct(tmp_path / "misplaced.dcm")
    shutil.copyfile(misplaced, stray.with_name("abcd" + "1" * 60))

    scan = index_orphans()

    assert (scan.indexed, scan.skipped) == (0, 2)
    assert Instance.objects.count() == 0
