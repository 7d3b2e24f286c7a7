"""The disk guard (dicomnodes/lifecycle/diskguard.py): its cached check
without a disk, then runscp on a small tmpfs (storescu gets A700 with the
reason before the volume is full; the admin and HL7 go on) and STOW-RS."""

import re
import shutil
import subprocess
from collections import namedtuple

import pydicom
import pytest
from django.test import Client

from dicomnodes.lifecycle import diskguard
from dicomnodes.lifecycle.diskguard import Guard, Limits
from dicomnodes.models import ArchiveSettings, Instance
from tests.support.dicomdata import make_ct
from tests.support.dicomweb_site import STORE, staff_with_token
from tests.support.processes import stored_files
from tests.worklist.test_runmllp import msa, order

MB = 2**20
Usage = namedtuple("Usage", "total used free")


class FakeVolume:
    """A volume whose free space the test sets, and a clock it moves."""

    def __init__(self, total, free):
        self.total, self.free, self.now, self.measures = total, free, 0.0, 0

    def usage(self, _path):
        self.measures += 1
        return Usage(self.total, self.total - self.free, self.free)

    def guard(self, limits):
        return Guard(usage=self.usage, limits=lambda: limits, volume=lambda: "/x", clock=lambda: self.now)


def test_the_threshold_is_the_larger_of_megabytes_and_percent():
    assert Limits(min_free_mb=2048, min_free_percent=5).threshold(10 * 2**30) == 2048 * MB
    assert Limits(min_free_mb=2048, min_free_percent=5).threshold(100 * 2**30) == 5 * 2**30
    assert Limits(min_free_mb=0, min_free_percent=0).threshold(100 * 2**30) == 0


def test_it_refuses_the_store_that_would_cross_the_threshold_not_the_one_before():
    volume = FakeVolume(total=100 * MB, free=30 * MB)
    guard = volume.guard(Limits(min_free_mb=20, min_free_percent=0))
    assert guard.check(10 * MB) is None  # leaves exactly 20 MB
    reason = guard.check(1)
    assert reason == "Out of resources: 20.0 MB free on disk, the minimum is 20.0 MB"
    assert len(reason) <= 64  # an Error Comment is an LO


def test_a_burst_between_two_measures_counts_the_bytes_it_let_through():
    volume = FakeVolume(total=1000 * MB, free=100 * MB)
    guard = volume.guard(Limits(min_free_mb=50, min_free_percent=0))
    accepted = 0
    while guard.check(MB) is None:
        accepted += 1  # the disk is not measured again: the same instant, under 64 MB
        assert accepted < 100
    assert accepted == 50
    assert volume.measures <= 2  # the first measure, and one more before refusing


def test_it_measures_again_after_half_a_second_and_after_64_mb():
    volume = FakeVolume(total=10 * 2**30, free=5 * 2**30)
    guard = volume.guard(Limits(min_free_mb=1, min_free_percent=0))
    for _ in range(1000):
        guard.check(1000)
    assert volume.measures == 1
    volume.now += diskguard.MEASURE_EVERY
    guard.check(1000)
    assert volume.measures == 2
    guard.check(diskguard.MEASURE_AFTER_BYTES)
    guard.check(1)
    assert volume.measures == 3


def test_space_freed_elsewhere_counts_at_once():
    volume = FakeVolume(total=100 * MB, free=21 * MB)
    guard = volume.guard(Limits(min_free_mb=20, min_free_percent=0))
    assert guard.check(2 * MB) is not None
    volume.free = 60 * MB  # recycling deleted studies
    volume.now += 0.001  # a refusal measures again, however soon
    assert guard.check(2 * MB) is None


def test_no_minimum_refuses_nothing_and_leaves_a_full_disk_to_the_write():
    volume = FakeVolume(total=100 * MB, free=1 * MB)
    guard = volume.guard(Limits(min_free_mb=0, min_free_percent=0))
    assert guard.check(2 * MB) is None


def test_a_volume_that_cannot_be_measured_refuses_nothing():
    def broken(_path):
        raise OSError(5, "I/O error")

    guard = Guard(usage=broken, limits=Limits, volume=lambda: "/x")
    assert guard.check(MB) is None


@pytest.mark.django_db
def test_saving_the_settings_takes_effect_in_this_process_at_once(settings, tmp_path):
    settings.PACS_STORAGE_DIR = tmp_path
    free = shutil.disk_usage(tmp_path).free
    row = ArchiveSettings.load()
    row.min_free_mb, row.min_free_percent = 0, 0
    row.save()
    assert diskguard.check(MB) is None
    row.min_free_mb = free // MB + 1024  # more than there is
    row.save()
    assert diskguard.check(MB).startswith("Out of resources: ")


# --- with real peers ---------------------------------------------------------------------------


@pytest.fixture
def storage_16m(data_dir):
    """A 16 MiB tmpfs as the storage folder (needs the right to mount: root)."""
    storage = data_dir / "storage"
    storage.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(storage)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs ({result.stderr.decode().strip() or 'not root'})")
    yield storage
    subprocess.run(["umount", "-l", str(storage)], check=False)


def test_storescu_gets_a700_with_the_reason_before_the_volume_is_full(
    storage_16m, start_scp, start_mllp, an_admin, tmp_path
):
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 8, "min_free_percent": 0})
    scp = start_scp()
    folder = tmp_path / "cts"
    folder.mkdir()
    for i in range(8):
        make_ct(folder / f"ct{i}.dcm", size=1000)  # ≈ 2 MB each: 16 MB in all

    result = scp.store(folder, options=["-d"])

    output = result.stdout + result.stderr
    comments = re.findall(r"Out of resources: [0-9.]+ MB free on disk, the minimum is 8\.0 MB", output)
    stored = Instance.objects.count()
    # storescu halts at the first refusal: 2 MB instances fill 16 MB down to 8 MB.
    assert len(comments) == 1 and 3 <= stored <= 4, output[-3000:]
    assert shutil.disk_usage(storage_16m).free >= 8 * MB  # refused before the minimum, not at ENOSPC
    assert len(stored_files(scp.data_dir)) == stored
    assert "refused by the disk guard" in scp.log()
    assert "out of disk space" not in scp.log()

    # The rest of the server goes on: the admin warns, HL7 is acknowledged.
    page = an_admin.get("/admin/")
    assert page.status_code == 200
    warning = r'disk-warning">Storage volume filling up: [0-9.]+ MB free of 16.0 MB, the minimum is 8.0 MB'
    assert re.search(warning, page.content.decode())
    mllp = start_mllp()
    assert msa(mllp.mllp_send(order("DISKLOW1"), tmp_dir=tmp_path)) == ("AA", "DISKLOW1")


@pytest.mark.django_db
def test_stow_rs_answers_the_guards_a700_and_stores_nothing(data_dir, django_user_model, tmp_path):
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 2**40, "min_free_percent": 0})
    _user, key = staff_with_token(django_user_model, "stower", codenames=STORE)
    part10 = make_ct(tmp_path / "ct.dcm").read_bytes()
    body = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + part10 + b"\r\n--b0--\r\n"

    response = Client().post(
        "/dicomweb/studies",
        data=body,
        content_type='multipart/related; boundary=b0; type="application/dicom"',
        HTTP_AUTHORIZATION=f"Token {key}",
    )

    assert response.status_code == 409
    answer = pydicom.Dataset.from_json(response.json())
    assert answer.FailedSOPSequence[0].FailureReason == 0xA700
    assert stored_files(data_dir) == []


# --- the dashboard ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_dashboard_shows_the_free_space_and_sends_a_warning_when_it_runs_low(an_admin, data_dir, monkeypatch):
    from portal.dashboard import Feed

    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 1, "min_free_percent": 0})
    page = an_admin.get("/dashboard/").content.decode()
    assert re.search(r'id="dash-disk" data-state="ok">[0-9.]+ [MG]B free of [0-9.]+ [MG]B, the minimum is 1.0 MB', page)
    assert re.search(r'id="dash-disk-warning" hidden>', page)

    monkeypatch.setattr("portal.dashboard.DISK_EVERY", 0)
    feed = Feed()
    feed.snapshot()
    assert feed.poll() == []  # the page was rendered with it
    ArchiveSettings.objects.filter(pk=1).update(min_free_mb=2**40)
    [item] = feed.poll()
    assert item["type"] == "disk" and item["state"] == "low"
    assert item["warning"].startswith("Storage volume nearly full: ")


def test_an_instance_too_big_for_the_room_left_is_refused_as_it_arrives_not_at_enospc(storage_16m, start_scp, tmp_path):
    """Above 4 MiB a data set is spooled to a file on the storage volume as
    it arrives (dicomnodes/scp/sinks.py): the guard is asked before the
    spool file is made and for each fragment, so a 20 MB image on a 16 MB
    volume stops at the minimum, not when the disk is full."""
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 2, "min_free_percent": 0})
    scp = start_scp()
    folder = tmp_path / "big"
    folder.mkdir()
    make_ct(folder / "big.dcm", size=3200)  # 3200² × 2 bytes ≈ 20 MB

    result = scp.store(folder, options=["-d"])

    output = result.stdout + result.stderr
    assert re.search(r"Out of resources: [0-9.]+ MB free on disk, the minimum is 2\.0 MB", output), output[-3000:]
    assert Instance.objects.count() == 0
    assert shutil.disk_usage(storage_16m).free >= 2 * MB
    assert not [p for p in storage_16m.rglob("*") if p.is_file()], "no spool or stored file is left"
    assert "out of disk space" not in scp.log()


def test_an_instance_that_leaves_the_minimum_free_is_stored_its_bytes_counted_once(storage_16m, start_scp, tmp_path):
    """The guard counts a data set's bytes as they arrive into its file; the
    store does not count them a second time (which would refuse a 7 MB
    instance on 16 MB with an 8 MB minimum: 16 − 7 − 7 < 8)."""
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"min_free_mb": 8, "min_free_percent": 0})
    scp = start_scp()
    folder = tmp_path / "one"
    folder.mkdir()
    make_ct(folder / "ct.dcm", size=1850)  # 1850² × 2 bytes ≈ 6.5 MiB: 9.5 MiB left

    result = scp.store(folder, options=["-d"])

    assert result.returncode == 0 and "Out of resources" not in result.stdout + result.stderr
    assert Instance.objects.count() == 1
    assert shutil.disk_usage(storage_16m).free >= 8 * MB
