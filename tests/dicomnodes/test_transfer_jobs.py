"""Transfer jobs over the network: send to, and retrieve from, Orthanc as the
remote PACS; the connection limit, time-outs, retries and cancel against
small peers that record what they see.

Jobs run through `transfers.run_next()` in this process (its threads are the
runner's own); `tests/dicomnodes/test_transfer_admin.py` also runs one in django-q2's cluster.
"""

import threading
import time

import pytest
from pydicom import dcmread
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import DicomServerSettings, Instance, Peer, TransferJob, TransferLevel, TransferState
from dicomnodes.transfers.jobs import cancel_job, run_next, submit_job
from pacs_site.models import Event, EventKind
from tests.support.dicomdata import make_ct_series
from tests.support.processes import wait_until
from tests.support.transfer import (
    PlainQrScp,
    RecordingScp,
    SilentPeer,
    dataset_bytes,
    store_to_orthanc,
    store_to_us,
)


def settings(**values):
    row = DicomServerSettings.load()
    for name, value in values.items():
        setattr(row, name, value)
    row.save()
    return row


def a_study_here(scp, tmp_path, name, count=3, **kwargs):
    paths = make_ct_series(tmp_path / name, count, **kwargs)
    store_to_us(scp, tmp_path / name)
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


def recorder_peer(recorder, name="recorder"):
    return Peer.objects.create(name=name, ae_title=recorder.ae_title, host="127.0.0.1", port=recorder.port)


# --- Orthanc as the remote PACS ---------------------------------------------------------


@pytest.mark.archive
def test_a_study_sent_to_orthanc_arrives_byte_identical(shared_scp, orthanc, tmp_path):
    study_uid, _ = a_study_here(shared_scp, tmp_path, "s", count=4)
    job = submit_job(kind="send", peer=orthanc.peer, uids=[study_uid], kick_runner=False)
    assert run_next() == 1
    job.refresh_from_db()
    assert (job.state, job.done, job.total, job.failed) == (TransferState.SUCCEEDED, 4, 4, 0), job.last_error
    assert job.bytes > 0 and job.finished_at is not None
    received = orthanc.instance_files()
    ours = Instance.objects.filter(series__study__study_instance_uid=study_uid)
    assert sorted(received) == sorted(i.sop_instance_uid for i in ours)
    for instance in ours:
        stored = instance_path(instance.sop_instance_uid).read_bytes()
        assert dataset_bytes(received[instance.sop_instance_uid]) == dataset_bytes(stored)


@pytest.mark.archive
@pytest.mark.parametrize("kind", ["move", "get"])
def test_a_study_retrieved_from_orthanc_is_indexed_here(shared_scp, orthanc, tmp_path, kind):
    paths = make_ct_series(tmp_path / "remote", 3, patient_id="R1", accession="RACC")
    store_to_orthanc(orthanc, tmp_path / "remote")
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    settings(open_transferred_studies=True)
    job = submit_job(kind=kind, peer=orthanc.peer, uids=[study_uid], kick_runner=False)
    run_next()
    job.refresh_from_db()
    assert (job.state, job.done, job.total) == (TransferState.SUCCEEDED, 3, 3), job.last_error
    rows = Instance.objects.filter(series__study__study_instance_uid=study_uid)
    assert rows.count() == 3
    assert {r.calling_ae for r in rows} == {"ORTHANC"}
    event = Event.objects.get(kind=EventKind.STUDY_RETRIEVED, study_instance_uid=study_uid)
    assert event.open_study is True and "ORTHANC" in event.message


@pytest.mark.archive
def test_large_images_a_c_get_brings_are_stored_byte_for_byte_with_our_file_meta(orthanc, data_dir, tmp_path):
    """Above spool.STREAM_AT a C-STORE sub-operation's data set is written
    into its own file as it arrives (Requestor(store_as=…))."""
    paths = make_ct_series(tmp_path / "remote", 2, size=256)  # 128 KiB of pixels each
    store_to_orthanc(orthanc, tmp_path / "remote")
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    job = submit_job(kind="get", peer=orthanc.peer, uids=[study_uid], kick_runner=False)
    run_next()
    job.refresh_from_db()
    assert (job.state, job.done) == (TransferState.SUCCEEDED, 2), job.last_error
    for path in paths:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        stored = instance_path(uid)
        assert dataset_bytes(stored.read_bytes()) == dataset_bytes(path.read_bytes())
        meta = dcmread(stored, stop_before_pixels=True).file_meta
        assert (meta.MediaStorageSOPInstanceUID, meta.SourceApplicationEntityTitle) == (uid, "ORTHANC")
        assert list(stored.parent.iterdir()) == [stored]


@pytest.mark.archive
def test_a_series_can_be_retrieved_alone(orthanc, data_dir, tmp_path):
    first = make_ct_series(tmp_path / "one", 2)
    study_uid = str(dcmread(first[0]).StudyInstanceUID)
    second = make_ct_series(tmp_path / "two", 3, study_uid=study_uid)
    store_to_orthanc(orthanc, tmp_path / "one")
    store_to_orthanc(orthanc, tmp_path / "two")
    series_uid = str(dcmread(second[0]).SeriesInstanceUID)
    job = submit_job(
        kind="get", peer=orthanc.peer, level=TransferLevel.SERIES, uids=[series_uid], study_uid=study_uid,
        kick_runner=False,
    )  # fmt: skip
    run_next()
    job.refresh_from_db()
    assert job.state == TransferState.SUCCEEDED, job.last_error
    assert set(Instance.objects.values_list("series__series_instance_uid", flat=True)) == {series_uid}


def test_a_c_get_learns_a_studys_sop_classes_from_one_study_level_answer(orthanc, data_dir, tmp_path, caplog):
    """Orthanc fills in SOP Classes in Study and the instance count: no walk
    down to the instances, and both classes are accepted in the SCP role."""
    paths = make_ct_series(tmp_path / "remote", 3)
    sc = dcmread(paths[2])
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sc.save_as(paths[2])
    store_to_orthanc(orthanc, tmp_path / "remote")
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    caplog.set_level("INFO", logger="dicomnodes.transfers.retrieve")
    job = submit_job(kind="get", peer=orthanc.peer, uids=[study_uid], kick_runner=False)
    run_next()
    job.refresh_from_db()
    assert (job.state, job.done, job.total) == (TransferState.SUCCEEDED, 3, 3), job.last_error
    assert sorted(Instance.objects.values_list("sop_class_uid", flat=True)) == sorted(
        [CTImageStorage, CTImageStorage, SecondaryCaptureImageStorage]
    )
    assert f"transfer job {job.pk}: ORTHANC holds 3 instances of 2 SOP classes (study-level C-FIND)" in caplog.text


def test_a_c_get_from_a_peer_that_leaves_sop_classes_in_study_empty_walks_down_to_the_instances(
    transactional_db, data_dir, tmp_path, caplog
):
    paths = make_ct_series(tmp_path / "remote", 2)
    study_uid = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    paths += make_ct_series(tmp_path / "other-series", 1, study_uid=study_uid, series_number=2)
    peer_scp = PlainQrScp(paths).start()
    try:
        peer = Peer.objects.create(name="plain", ae_title=peer_scp.ae_title, host="127.0.0.1", port=peer_scp.port)
        caplog.set_level("INFO", logger="dicomnodes.transfers.retrieve")
        job = submit_job(kind="get", peer=peer, uids=[study_uid], kick_runner=False)
        run_next()
    finally:
        peer_scp.stop()
    job.refresh_from_db()
    assert (job.state, job.done, job.total) == (TransferState.SUCCEEDED, 3, 3), job.last_error
    assert Instance.objects.count() == 3
    assert peer_scp.levels == ["STUDY", "SERIES", "IMAGE", "IMAGE"]
    assert "PLAINQR does not say what its studies hold: asking for every instance" in caplog.text


def test_retrieving_a_study_orthanc_does_not_have_fails_with_a_reason(orthanc, data_dir):
    job = submit_job(kind="move", peer=orthanc.peer, uids=["1.2.3.4.5.6.7.8"], kick_runner=False)
    run_next()
    job.refresh_from_db()
    assert job.state == TransferState.FAILED
    assert job.last_error == "C-MOVE to PACS failed: status 0xC000"  # Orthanc's answer for an unknown study


def test_a_move_to_a_destination_orthanc_does_not_know_fails_with_a_reason(orthanc, data_dir, tmp_path):
    paths = make_ct_series(tmp_path / "remote", 1)
    store_to_orthanc(orthanc, tmp_path / "remote")
    study_uid = str(dcmread(paths[0]).StudyInstanceUID)
    job = submit_job(kind="move", peer=orthanc.peer, uids=[study_uid], move_destination="NOBODY", kick_runner=False)
    run_next()
    job.refresh_from_db()
    assert job.state == TransferState.FAILED
    assert job.last_error.startswith("C-MOVE to NOBODY failed")


@pytest.mark.archive
def test_a_move_to_us_while_our_dicom_server_is_off_fails_with_a_reason(transactional_db):
    settings(port=0)
    peer = Peer.objects.create(name="remote", ae_title="REMOTE", host="127.0.0.1", port=104)
    job = submit_job(kind="move", peer=peer, uids=["1.2.3"], kick_runner=False)
    run_next()
    job.refresh_from_db()
    assert job.state == TransferState.FAILED
    assert job.last_error == "our DICOM server is off (port 0), so a C-MOVE to us cannot arrive: use C-GET"


# --- the connection limit ------------------------------------------------------------------


@pytest.mark.archive
def test_with_two_connections_five_jobs_never_hold_more_than_two_associations(shared_scp, tmp_path):
    settings(max_outgoing_connections=2)
    studies = [a_study_here(shared_scp, tmp_path, f"s{i}", count=2)[0] for i in range(5)]
    recorder = RecordingScp(delay=0.3).start()
    try:
        peer = recorder_peer(recorder)
        jobs = [submit_job(kind="send", peer=peer, uids=[uid], kick_runner=False) for uid in studies]
        assert run_next() == 5
    finally:
        recorder.stop()
    assert recorder.max_concurrent == 2  # the limit, and it was used
    assert recorder.associations == 5
    assert len(recorder.received) == 10 == len(set(recorder.received))
    rows = TransferJob.objects.filter(pk__in=[j.pk for j in jobs]).order_by("pk")
    assert {r.state for r in rows} == {TransferState.SUCCEEDED}
    started = [r.started_at for r in rows]
    assert started == sorted(started)  # first come, first served


# --- time-outs, retries, cancel ------------------------------------------------------------


def test_a_peer_that_never_answers_fails_the_job_within_the_service_timeout(shared_scp, tmp_path):
    study_uid, _ = a_study_here(shared_scp, tmp_path, "s", count=1)
    settings(service_timeout=2, retry_delays="")
    silent = SilentPeer()
    try:
        peer = Peer.objects.create(name="hung", ae_title="HUNG", host="127.0.0.1", port=silent.port)
        job = submit_job(kind="send", peer=peer, uids=[study_uid], kick_runner=False)
        started = time.monotonic()
        run_next()
        elapsed = time.monotonic() - started
    finally:
        silent.stop()
    job.refresh_from_db()
    assert job.state == TransferState.FAILED
    assert "peer did not answer within 2 s" in job.last_error
    assert elapsed < 2 + 2.5


@pytest.mark.archive
def test_a_peer_that_is_down_then_up_gets_the_study_on_a_retry_without_duplicates(shared_scp, tmp_path):
    study_uid, _ = a_study_here(shared_scp, tmp_path, "s", count=3)
    settings(retry_delays="1s 1s")
    recorder = RecordingScp()
    peer = recorder_peer(recorder)
    job = submit_job(kind="send", peer=peer, uids=[study_uid], kick_runner=False)
    run_next()
    job.refresh_from_db()
    assert job.state == TransferState.QUEUED and job.attempts == 1
    assert "connection refused" in job.last_error
    recorder.start()
    try:
        time.sleep(max(0.0, (job.next_attempt_at - job.updated_at).total_seconds()) + 0.2)
        run_next()
    finally:
        recorder.stop()
    job.refresh_from_db()
    assert (job.state, job.attempts, job.done) == (TransferState.SUCCEEDED, 2, 3), job.last_error
    assert len(recorder.received) == 3 == len(set(recorder.received))


@pytest.mark.parametrize("processes", [1, 2])
def test_the_worker_retries_when_the_retry_time_comes(start_scp, qcluster, tmp_path, processes):
    """A real qcluster worker runs the job; runscp's loop (its dispatcher's,
    with several processes) wakes it at the retry time (django-q2's schedule
    alone would be up to 30 s late)."""
    scp = start_scp(processes=processes)
    study_uid, _ = a_study_here(scp, tmp_path, "s", count=2)
    settings(retry_delays="3s")
    recorder = RecordingScp()
    worker = qcluster()
    try:
        job = submit_job(kind="send", peer=recorder_peer(recorder), uids=[study_uid])
        wait_until(
            lambda: TransferJob.objects.filter(pk=job.pk, attempts=1, state=TransferState.QUEUED).exists(),
            30,
            message=f"attempt 1 over\n{worker.log()}",
        )
        job.refresh_from_db()
        assert job.state == TransferState.QUEUED and "connection refused" in job.last_error
        recorder.start()
        wait_until(
            lambda: TransferJob.objects.get(pk=job.pk).state == TransferState.SUCCEEDED,
            3 + 8,
            message=f"the retry\n{worker.log()}",
        )
    finally:
        recorder.stop()
    job.refresh_from_db()
    assert job.attempts == 2
    assert len(recorder.received) == 2 == len(set(recorder.received))


@pytest.mark.archive
def test_instances_delivered_before_a_failure_are_not_sent_again(shared_scp, tmp_path):
    study_uid, _ = a_study_here(shared_scp, tmp_path, "s", count=5)
    settings(retry_delays="1s")
    recorder = RecordingScp(abort_after=2).start()
    try:
        peer = recorder_peer(recorder)
        job = submit_job(kind="send", peer=peer, uids=[study_uid], kick_runner=False)
        run_next()
        job.refresh_from_db()
        assert job.state == TransferState.QUEUED, job.last_error
        assert job.done == 2 and len(job.delivered) == 2
        time.sleep(1.2)
        run_next()
    finally:
        recorder.stop()
    job.refresh_from_db()
    assert job.state == TransferState.SUCCEEDED, job.last_error
    assert recorder.associations == 2
    assert len(recorder.received) == 5 == len(set(recorder.received))


@pytest.mark.archive
def test_retries_end_in_failure_when_the_delays_are_used_up(transactional_db):
    settings(retry_delays="1s")
    peer = Peer.objects.create(name="gone", ae_title="GONE", host="127.0.0.1", port=RecordingScp().port)
    job = TransferJob.objects.create(kind="move", peer=peer, uids=["1.2.3"], attempts=1)
    run_next()
    job.refresh_from_db()
    assert job.state == TransferState.FAILED
    assert "gave up after 2 attempts" in job.last_error


def test_cancelling_a_running_job_aborts_its_association(shared_scp, tmp_path):
    study_uid, _ = a_study_here(shared_scp, tmp_path, "s", count=6)
    recorder = RecordingScp(delay=0.7).start()
    try:
        job = submit_job(kind="send", peer=recorder_peer(recorder), uids=[study_uid], kick_runner=False)
        runner = threading.Thread(target=run_next)
        runner.start()
        wait_until(lambda: TransferJob.objects.get(pk=job.pk).done >= 1, 10, message="the first instance")
        assert cancel_job(job) is True
        asked = time.monotonic()
        runner.join(10)
        assert time.monotonic() - asked < 3
        # The peer handles the A-ABORT once its current C-STORE (0.7 s here)
        # is over; stopping it before then would hide what it was sent.
        wait_until(lambda: recorder.aborted == 1, 3, message="the peer to see the A-ABORT")
    finally:
        recorder.stop()
    job.refresh_from_db()
    assert job.state == TransferState.CANCELLED
    assert len(recorder.received) < 6
