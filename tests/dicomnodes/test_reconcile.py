"""Orphan files (written, never indexed) are indexed when runscp starts; the
scan at start is bounded (dicomnodes/archive/reconcile.py)."""

import os
import shutil
import time

import pydicom
import pytest

from dicomnodes.archive import quarantine
from dicomnodes.archive.reconcile import index_orphans
from dicomnodes.archive.storage import instance_path, write_atomically
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
def test_the_scan_at_start_leaves_misplaced_instances_and_sets_unreadable_files_aside(data_dir, tmp_path):
    """An unreadable file under one of our names is one a power cut cut
    short: it goes to the quarantine folder, so that its name is free."""
    stray = data_dir / "storage" / "ab" / "cd" / ("ab" + "cd" + "0" * 60)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not DICOM")
    misplaced = make_ct(tmp_path / "misplaced.dcm")
    shutil.copyfile(misplaced, stray.with_name("abcd" + "1" * 60))
    foreign = stray.with_name("notes.txt")
    foreign.write_bytes(b"someone's")

    scan = index_orphans()

    assert (scan.indexed, scan.skipped, scan.set_aside) == (0, 2, 1)
    assert Instance.objects.count() == 0
    assert not stray.exists() and stray.with_name("abcd" + "1" * 60).exists() and foreign.exists()
    [kept] = quarantine.listing()
    assert quarantine.path_of(kept.name).read_bytes() == b"not DICOM"


@pytest.mark.django_db
def test_the_scan_at_start_sets_aside_a_file_cut_short_and_the_instance_can_be_stored_again(data_dir, tmp_path):
    src = make_ct(tmp_path / "cut.dcm", size=64)
    uid = leave_orphan(src)
    path = instance_path(uid)
    whole = path.read_bytes()
    path.write_bytes(whole[:-1000])  # a power cut before its sync: the name, not all the bytes

    scan = index_orphans()

    assert (scan.indexed, scan.set_aside) == (0, 1)
    assert not path.exists() and not Instance.objects.exists()
    [kept] = quarantine.listing()
    assert quarantine.path_of(kept.name).read_bytes() == whole[:-1000]
    assert write_atomically(path, (whole,), overwrite=False, fsync=True) is True  # the sender's next try


@pytest.mark.django_db
def test_the_scan_at_start_drops_recent_rows_whose_files_were_lost_or_cut_short(data_dir, tmp_path):
    rows = archive_files(make_ct_series(tmp_path / "s", 3, patient_id="P1"))
    cut, lost, kept = (instance_path(r.sop_instance_uid) for r in rows)
    cut.write_bytes(cut.read_bytes()[:-1000])
    lost.unlink()

    scan = index_orphans()

    assert scan.dropped == 2
    assert list(Instance.objects.values_list("sop_instance_uid", flat=True)) == [rows[2].sop_instance_uid]
    study = Study.objects.get()
    assert (study.num_instances, study.series.get().num_instances) == (1, 1)
    assert not cut.exists() and kept.exists()
    assert len(quarantine.listing()) == 1
    assert index_orphans().dropped == 0


@pytest.mark.django_db
def test_the_scan_at_start_keeps_a_recent_row_whose_file_was_rewritten_whole_and_takes_its_size(data_dir, tmp_path):
    """A correction rewrites the files, then their rows' sizes (and an
    "overwrite" duplicate replaces the file before its row): a stop in
    between leaves a whole file of another size, which is not a power cut's."""
    [row] = archive_files([make_ct(tmp_path / "c.dcm", size=64)])
    path = instance_path(row.sop_instance_uid)
    ds = pydicom.dcmread(path)
    ds.PatientName = "CORRECTED^NAME^WITH^A^LONGER^VALUE"
    ds.save_as(path)
    assert path.stat().st_size != Instance.objects.get().file_size

    scan = index_orphans()

    assert (scan.dropped, scan.set_aside) == (0, 0)
    assert Instance.objects.get().file_size == path.stat().st_size
    assert pydicom.dcmread(path).PatientName == "CORRECTED^NAME^WITH^A^LONGER^VALUE"
    assert not quarantine.listing()
