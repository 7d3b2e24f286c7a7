"""What the server writes is its owner's alone (files 0600, folders 0700),
except what a disc robot reads (pacs_site/datafiles.py)."""

import io
import stat
import subprocess
import sys

import pydicom
import pytest
from django.core.exceptions import ImproperlyConfigured
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage

from dicomnodes.archive.storage import instance_path
from pacs_site.env import envoctal
from portal.previews import series_preview
from publishing import robots
from publishing.discs import stage_disc
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.processes import BASE_DIR, MODALITY, server_env


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def a_dataset_nobody_understands(tmp_path):
    """A valid file meta, then bytes that are no dataset (runscp quarantines them)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = io.BytesIO()
    write_file_meta_info(buf, meta)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + buf.getvalue() + b"\x08\x00\x18\x00UI\xff\xffgarbage" + bytes(256))
    return bad


def run_manage(data_dir, code, **env):
    """`manage.py shell -c code` with its own data folder and SQLite database."""
    environment = server_env(data_dir, **env)
    environment.pop("DATABASE_URL")
    environment.pop("SECRET_KEY")  # a fresh install makes its own
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "shell", "-c", code],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runscp_keeps_stored_and_quarantined_files_to_its_owner(scp, tmp_path, monkeypatch):
    good = make_ct(tmp_path / "good.dcm")
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # sent raw from the file
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(a_dataset_nobody_understands(tmp_path)).Status == 0xC000
        assert assoc.send_c_store(good).Status == 0x0000
    finally:
        assoc.release()

    (quarantined,) = (scp.data_dir / "quarantine").iterdir()
    assert (mode(quarantined.parent), mode(quarantined)) == (0o700, 0o600)
    stored = instance_path(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    assert mode(stored) & 0o077 == 0
    assert (mode(stored.parent), mode(stored.parent.parent), mode(scp.data_dir / "storage")) == (0o700,) * 3


def test_a_new_database_and_its_journal_are_the_owners_alone(tmp_path):
    data = tmp_path / "fresh"
    # The -wal and -shm files exist while a connection is open: look from inside.
    code = (
        "import os, stat; from django.db import connection; connection.cursor().execute('CREATE TABLE t (x)'); "
        "print([oct(stat.S_IMODE(os.stat(connection.settings_dict['NAME'] + s).st_mode)) for s in ('-wal', '-shm')])"
    )
    result = run_manage(data, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['0o600', '0o600']"
    assert mode(data / "pacs.sqlite3") == 0o600
    assert mode(data / "secret_key") == 0o600
    assert mode(data) == 0o711  # others pass through to the robot's staging folder, list nothing


def test_what_an_earlier_version_left_open_is_closed_at_start(tmp_path):
    data = tmp_path / "old"
    (data / "quarantine").mkdir(parents=True)
    (data / "pacs.sqlite3").write_bytes(b"")
    (data / "quarantine").chmod(0o755)
    (data / "pacs.sqlite3").chmod(0o644)

    assert run_manage(data, "pass").returncode == 0

    assert (mode(data / "quarantine"), mode(data / "pacs.sqlite3")) == (0o700, 0o600)


def test_a_umask_of_027_lets_the_group_read(tmp_path):
    data = tmp_path / "grouped"
    code = "from django.conf import settings; (settings.PACS_DATA_DIR / 'x').write_text('x')"
    result = run_manage(data, code, PACS_UMASK="027")
    assert result.returncode == 0, result.stderr
    assert mode(data / "x") == 0o640
    assert mode(data / "secret_key") == 0o600  # written 0600 on purpose, whatever the umask


def test_a_umask_that_is_not_octal_is_refused(monkeypatch):
    monkeypatch.setenv("PACS_UMASK", "0o99")
    with pytest.raises(ImproperlyConfigured, match="not an octal number"):
        envoctal("PACS_UMASK", 0o077)
    monkeypatch.setenv("PACS_UMASK", "0o027")
    assert envoctal("PACS_UMASK", 0o077) == 0o027


def test_previews_are_cached_for_the_owner_alone(data_dir, db, tmp_path):
    (instance,) = archive_files([make_ct(tmp_path / "ct.dcm")])
    png = series_preview(instance.series)
    assert mode(png) == 0o600
    assert mode(data_dir / "cache") == 0o700


def test_disc_folders_and_job_files_stay_readable_by_the_robot(tmp_path):
    staging = tmp_path / "publishing"
    staging.mkdir(mode=0o700)
    disc = staging / "PACS00001-ABC123-1"
    stage_disc(disc, make_ct_series(tmp_path / "src", 2), fileset_id="PACS00001_1", readme="Disc 1")
    job = robots.write_job("primera", tmp_path, _a_spec())

    assert mode(staging) == mode(disc) == 0o755
    assert {mode(p) for p in disc.rglob("*") if p.is_dir()} == {0o755}
    assert {mode(p) for p in disc.rglob("*") if p.is_file()} == {0o644}
    assert mode(job) == 0o644


def _a_spec():
    return robots.JobSpec(
        job_id="PACS00001-ABC123-1",
        data_folder=r"\\PACS\publishing\PACS00001-ABC123-1",
        media="cd",
        volume="PACS00001_1",
        copies=1,
        robot_name="",
        label="",
        merge_values=[],
    )
