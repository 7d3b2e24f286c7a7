"""A deletion as a running runscp sees it: C-FIND, C-MOVE and C-GET (DCMTK
findscu, movescu, getscu) no longer find it at once, an instance sent again
(storescu) creates its study afresh through the index writer's stale cache,
and a deletion killed between its commit and the unlink leaves files that
runscp's start and `manage.py archive verify` remove instead of indexing.

The kill is made deterministic by the child process itself: it deletes with
`tombstones.unlink_pending` replaced by a function that writes a marker
file and sleeps, so the marker appears exactly when the rows are committed
and no file is unlinked yet; the test waits for the marker and SIGKILLs it.
"""

import io
import signal
import subprocess
import sys

import pydicom
import pytest
from django.core.management import call_command
from pydicom.uid import generate_uid

from dicomnodes.lifecycle import deletion
from dicomnodes.models import Instance, Patient, Peer, Series, Study, Tombstone
from tests.dicomnodes.test_runscp_retrieve import move_destination
from tests.support.dicomdata import make_ct_series
from tests.support.processes import BASE_DIR, server_env, stored_files, wait_until

pytestmark = pytest.mark.archive

VIEWER = "VIEWER1"


def answers(folder):
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.exists() else []


def find(scp, out, level, *keys):
    out.mkdir(parents=True, exist_ok=True)
    result = scp.qr("findscu", f"QueryRetrieveLevel={level}", *keys, calling=VIEWER, options=["-X", "-od", str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    return [pydicom.dcmread(p) for p in answers(out)]


def test_find_move_and_get_no_longer_see_a_deleted_study_and_a_resent_one_comes_back(scp, tmp_path):
    study_uid = generate_uid()
    make_ct_series(tmp_path / "s1", 2, study_uid=study_uid, patient_id="P1", series_number=1)
    make_ct_series(tmp_path / "s2", 1, study_uid=study_uid, patient_id="P1", series_number=2)
    assert scp.store(tmp_path / "s1", tmp_path / "s2").returncode == 0
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True, may_retrieve=True)
    scp.wait_until_allowed(VIEWER, "move")
    second = Series.objects.get(series_number=2)

    deletion.delete_series([second.pk], actor="test")

    series = find(scp, tmp_path / "find-series", "SERIES", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID")
    assert [str(ds.SeriesInstanceUID) for ds in series] == [Series.objects.get().series_instance_uid]
    (study,) = find(
        scp, tmp_path / "find-study", "STUDY", f"StudyInstanceUID={study_uid}", "NumberOfStudyRelatedInstances"
    )
    assert int(study.NumberOfStudyRelatedInstances) == 2

    deletion.delete_studies([Study.objects.get().pk], actor="test")

    assert find(scp, tmp_path / "find-gone", "STUDY", f"StudyInstanceUID={study_uid}") == []
    assert find(scp, tmp_path / "find-patient", "STUDY", "PatientID=P1") == []
    keys = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
    with move_destination(scp, tmp_path / "moved", "DEST") as moved:
        scp.qr("movescu", *keys, calling=VIEWER, options=["-aem", "DEST"])
        assert answers(moved) == []
    (tmp_path / "got").mkdir()
    scp.qr("getscu", *keys, calling=VIEWER, options=["-od", str(tmp_path / "got")])
    assert answers(tmp_path / "got") == []
    assert stored_files(scp.data_dir) == []

    # Sent again: runscp's index writer still caches the deleted rows.
    assert scp.store(tmp_path / "s1", tmp_path / "s2").returncode == 0

    (study,) = find(
        scp, tmp_path / "find-again", "STUDY", f"StudyInstanceUID={study_uid}", "NumberOfStudyRelatedInstances"
    )
    assert int(study.NumberOfStudyRelatedInstances) == 3
    row = Study.objects.get()
    assert (row.num_series, row.num_instances, Patient.objects.get().num_studies) == (2, 3, 1)
    assert len(stored_files(scp.data_dir)) == 3
    assert not Tombstone.objects.exists()
    with move_destination(scp, tmp_path / "moved-again", "DEST2") as moved:
        result = scp.qr("movescu", *keys, calling=VIEWER, options=["-aem", "DEST2"])
        assert result.returncode == 0 and len(answers(moved)) == 3


def kill_a_deletion_after_its_commit(data_dir, tmp_path, study_pk):
    """Delete the study in a child process and SIGKILL it once the rows are
    committed and before any file is unlinked."""
    marker = tmp_path / "committed"
    script = f"""
import pathlib, time
from dicomnodes.archive import tombstones
from dicomnodes.lifecycle import deletion

def stuck(uids, root=None):
    pathlib.Path({str(marker)!r}).write_text("committed")
    time.sleep(120)

tombstones.unlink_pending = stuck
deletion.delete_studies([{study_pk}], actor="crash test")
"""
    child = subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "shell", "-c", script],
        cwd=BASE_DIR,
        env=server_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: marker.exists() or child.poll() is not None, 60, message="the deletion's commit")
        assert child.poll() is None, child.stderr.read().decode()
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
        child.stderr.close()


@pytest.mark.parametrize("cleaner", ["runscp start", "archive verify"])
def test_a_deletion_killed_after_its_commit_leaves_files_that_are_removed_not_indexed(
    start_scp, data_dir, tmp_path, cleaner
):
    scp = start_scp()
    make_ct_series(tmp_path / "s", 3, patient_id="P1")
    assert scp.store(tmp_path / "s").returncode == 0
    scp.stop()
    files = stored_files(data_dir)
    assert len(files) == 3

    kill_a_deletion_after_its_commit(data_dir, tmp_path, Study.objects.get().pk)

    # Rows gone, files still there: never the other way round.
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert stored_files(data_dir) == files
    assert Tombstone.objects.filter(unlinked_at=None).count() == 3

    if cleaner == "runscp start":
        again = start_scp()
        again.wait_for_log("unlinked 3 files of deleted instances")
        assert again.echo().returncode == 0
    else:
        out = io.StringIO()
        call_command("archive", "verify", stdout=out)
        assert "3 files of deleted instances removed, 0 without a row" in out.getvalue()

    assert stored_files(data_dir) == []
    assert not Instance.objects.exists() and not Study.objects.exists()
    assert not Tombstone.objects.filter(unlinked_at=None).exists()
