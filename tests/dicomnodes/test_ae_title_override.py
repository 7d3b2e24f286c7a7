"""Our AE title overridden for a run (`runscp --ae-title`, `runpacs
--ae-title`, PACS_AE_TITLE) is the one every process uses: runscp answers to
it, publishing burns what arrives on its `_E` variant, and transfer jobs in
the django-q2 worker call peers as it.

Personas: MODALITY1 (a CT scanner), Orthanc (a remote PACS that knows us
only by the overriding title), an EPSON disc robot.
"""

import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from pydicom import dcmread

from dicomnodes.models import DicomServerSettings, Instance, TransferJob, TransferState
from dicomnodes.transfers.jobs import submit_job
from publishing.models import BurnJob
from tests.support.dicomdata import make_ct_series
from tests.support.processes import BASE_DIR, free_port, port_accepts, server_env, wait_until
from tests.support.publishing import a_publisher, sop_uids
from tests.support.transfer import store_to_orthanc

OVERRIDE = "OVERRIDE"


def test_our_ae_title_is_the_stored_one_without_an_override(db, monkeypatch):
    monkeypatch.delenv("PACS_AE_TITLE", raising=False)
    assert DicomServerSettings.load().our_ae_title() == "PACS"


def test_pacs_ae_title_overrides_the_stored_title_and_its_publishing_variants(db, monkeypatch):
    monkeypatch.setenv("PACS_AE_TITLE", OVERRIDE)
    row = DicomServerSettings.load()
    assert row.our_ae_title() == OVERRIDE
    assert f"{OVERRIDE}_E" in row.called_ae_titles() and "PACS_E" not in row.called_ae_titles()


def test_an_invalid_pacs_ae_title_is_refused_loudly(db, monkeypatch):
    monkeypatch.setenv("PACS_AE_TITLE", "TWO WORDS")
    with pytest.raises(ImproperlyConfigured, match="PACS_AE_TITLE"):
        DicomServerSettings.load().our_ae_title()


def test_runscp_with_an_overriding_title_burns_what_arrives_on_its_e_variant(start_scp, data_dir, tmp_path):
    assert DicomServerSettings.load().ae_title == "PACS"
    scp = start_scp(ae_title=OVERRIDE)
    a_publisher("epson", tmp_path)
    files = make_ct_series(tmp_path / "series", 2)
    result = scp.store(*files, called=f"{OVERRIDE}_E")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: BurnJob.objects.exists(), 20, message=f"a burn job\n{scp.log()}")
    (job,) = BurnJob.objects.all()
    assert set(job.instances.values_list("sop_instance_uid", flat=True)) == sop_uids(files)


def test_runscp_refuses_an_invalid_overriding_title(data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "runscp", "--ae-title", "TWO WORDS", "--port", "0"],
        cwd=BASE_DIR,
        env=server_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--ae-title 'TWO WORDS'" in result.stderr


@pytest.fixture
def runpacs_with_override(transactional_db, data_dir, tmp_path):
    """`manage.py runpacs --only scp,worker --ae-title OVERRIDE`: runscp on a
    free port (stored), the django-q2 worker; the stored title stays PACS."""
    row = DicomServerSettings.load()
    row.port = free_port()
    row.save()
    log_path = tmp_path / "runpacs.log"
    argv = [sys.executable, str(BASE_DIR / "manage.py"), "runpacs", "--only", "scp,worker", "--ae-title", OVERRIDE]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env=server_env(data_dir), stdout=log, stderr=subprocess.STDOUT)
    proc.log = lambda: log_path.read_text(errors="replace")
    proc.dicom_port = row.port
    try:
        wait_until(lambda: proc.poll() is not None or port_accepts(row.port), 30, message="runscp under runpacs")
        assert proc.poll() is None, f"runpacs exited:\n{proc.log()}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.archive
def test_a_c_move_retrieve_under_runpacs_calls_the_peer_as_the_overriding_title(
    runpacs_with_override, orthanc, tmp_path
):
    # Orthanc knows us only as OVERRIDE: it answers a C-MOVE from that calling
    # AE alone (unknown callers may not move) and sends to that destination.
    orthanc.knows("pacs", OVERRIDE, runpacs_with_override.dicom_port)
    paths = make_ct_series(tmp_path / "remote", 3)
    store_to_orthanc(orthanc, tmp_path / "remote")
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)

    job = submit_job(kind="move", peer=orthanc.peer, uids=[study_uid])  # run by runpacs's qcluster
    wait_until(lambda: TransferJob.objects.get(pk=job.pk).is_finished(), 60, message="the job to finish")

    job.refresh_from_db()
    assert job.state == TransferState.SUCCEEDED, (job.last_error, runpacs_with_override.log())
    rows = Instance.objects.filter(series__study__study_instance_uid=study_uid)
    assert rows.count() == 3
    assert {r.called_ae for r in rows} == {OVERRIDE}
