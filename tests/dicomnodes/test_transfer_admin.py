"""Transfers from the admin and the shell: the Query/Retrieve page, "Send
to…", the job list's actions, `manage.py dicom send|retrieve`, and jobs run
by django-q2's cluster (`manage.py qcluster`), against Orthanc."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from dicomnodes.models import Instance, Peer, Study, TransferJob, TransferState
from dicomnodes.transfers.jobs import run_next
from tests.support.dicomdata import make_ct_series
from tests.support.processes import free_port, wait_until
from tests.support.transfer import RecordingScp, store_to_us

QUERY = reverse("admin:dicomnodes_transferjob_query")
JOBS = reverse("admin:dicomnodes_transferjob_changelist")


def search(client, orthanc, **fields):
    return client.get(QUERY, {"peer": orthanc.peer.pk, "search": "Search", **fields}).content.decode()


def test_the_query_page_finds_studies_by_name_date_and_modality(an_admin, orthanc_with_two_studies):
    page = search(an_admin, orthanc_with_two_studies, patient_name="SMITH*")
    assert "Smith^John" in page and "Jones^Ann" not in page
    page = search(an_admin, orthanc_with_two_studies, date_from="2025-01-01", date_to="2025-12-31")
    assert "Jones^Ann" in page and "Smith^John" not in page
    page = search(an_admin, orthanc_with_two_studies, modality="MR")
    assert "No study matches." in page
    assert "2 studies" in search(an_admin, orthanc_with_two_studies, modality="CT")


def test_the_query_page_drills_down_to_series_and_retrieves_the_ticked_one(
    an_admin, orthanc_with_two_studies, data_dir
):
    page = an_admin.get(
        QUERY,
        {
            "peer": orthanc_with_two_studies.peer.pk,
            "patient_id": "P1",
            "search": "Search",
            "study": orthanc_with_two_studies.study_a,
        },
    ).content.decode()
    assert f'value="{orthanc_with_two_studies.study_a}|{orthanc_with_two_studies.series_a}"' in page
    response = an_admin.post(
        QUERY,
        {
            "peer": orthanc_with_two_studies.peer.pk,
            "method": "get",
            "series": f"{orthanc_with_two_studies.study_a}|{orthanc_with_two_studies.series_a}",
        },
    )
    assert response.status_code == 302 and response.url == JOBS
    job = TransferJob.objects.get()
    assert (job.kind, job.level, job.uids, job.study_uid) == (
        "get",
        "SERIES",
        [orthanc_with_two_studies.series_a],
        orthanc_with_two_studies.study_a,
    )
    assert job.requested_by.username == "admin"
    run_next()
    job.refresh_from_db()
    assert job.state == TransferState.SUCCEEDED, job.last_error
    assert Instance.objects.filter(series__series_instance_uid=orthanc_with_two_studies.series_a).count() == 2


def test_a_peer_that_is_down_shows_why_on_the_query_page(an_admin, transactional_db):
    peer = Peer.objects.create(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    page = an_admin.get(QUERY, {"peer": peer.pk, "search": "Search"}).content.decode()
    assert "connection refused" in page


def test_the_query_page_needs_the_add_transfer_job_permission(client, django_user_model, transactional_db):
    user = django_user_model.objects.create_user("clerk", password="x", is_staff=True)
    client.force_login(user)
    assert client.get(QUERY).status_code == 403


def test_send_to_on_studies_queues_one_job_per_study(an_admin, shared_scp, tmp_path):
    make_ct_series(tmp_path / "a", 2)
    make_ct_series(tmp_path / "b", 1)
    store_to_us(shared_scp, tmp_path / "a")
    store_to_us(shared_scp, tmp_path / "b")
    peer = Peer.objects.create(name="remote", ae_title="REMOTE", host="127.0.0.1", port=104)
    studies = list(Study.objects.values_list("pk", flat=True))
    changelist = reverse("admin:dicomnodes_study_changelist")
    form = an_admin.post(changelist, {"action": "send_to", "_selected_action": studies})
    assert "Send 2 studies to" in form.content.decode()
    response = an_admin.post(
        changelist, {"action": "send_to", "_selected_action": studies, "peer": peer.pk, "apply": 1}
    )
    assert response.status_code == 302
    jobs = TransferJob.objects.order_by("pk")
    assert sorted((j.kind, j.peer_id, j.state, j.total) for j in jobs) == [
        ("send", peer.pk, "queued", 1),
        ("send", peer.pk, "queued", 2),
    ]
    assert {j.requested_by.username for j in jobs} == {"admin"}


def test_the_job_list_shows_queue_positions_and_cancels(an_admin, transactional_db):
    peer = Peer.objects.create(name="remote", ae_title="REMOTE", host="127.0.0.1", port=104)
    jobs = [TransferJob.objects.create(kind="move", peer=peer, uids=[f"1.2.{i}"]) for i in range(3)]
    page = an_admin.get(JOBS).content.decode()
    assert "Query/Retrieve" in page
    assert [jobs[i].queue_position() for i in range(3)] == [1, 2, 3]
    response = an_admin.post(JOBS, {"action": "cancel_selected", "_selected_action": [jobs[0].pk]})
    assert response.status_code == 302
    assert TransferJob.objects.get(pk=jobs[0].pk).state == TransferState.CANCELLED
    assert jobs[1].queue_position() == 1
    an_admin.post(JOBS, {"action": "resubmit_selected", "_selected_action": [jobs[0].pk]})
    assert TransferJob.objects.get(pk=jobs[0].pk).state == TransferState.QUEUED


# --- the shell ----------------------------------------------------------------------------------


def dicom(*args):
    out = StringIO()
    summary = call_command("dicom", *args, stdout=out)
    return summary, out.getvalue()


def test_dicom_retrieve_prints_progress_and_indexes_the_study(shared_scp, orthanc_with_two_studies):
    summary, output = dicom("retrieve", "orthanc", orthanc_with_two_studies.study_a)
    assert summary == f"job #{TransferJob.objects.get().pk} succeeded: 2/2"
    assert "queued: retrieve (C-MOVE): 1 study" in output
    assert Instance.objects.filter(series__study__study_instance_uid=orthanc_with_two_studies.study_a).count() == 2


def test_dicom_send_then_a_failed_send_exits_non_zero(shared_scp, orthanc_with_two_studies, tmp_path):
    make_ct_series(tmp_path / "mine", 3)
    store_to_us(shared_scp, tmp_path / "mine")
    uid = Study.objects.get().study_instance_uid
    summary, output = dicom("send", "orthanc", uid)
    assert summary.endswith("succeeded: 3/3")
    assert orthanc_with_two_studies.count_instances() == 3 + 3
    with pytest.raises(CommandError, match="none of these study UIDs is stored here"):
        dicom("send", "orthanc", "1.2.3.4")
    from dicomnodes.models import DicomServerSettings

    row = DicomServerSettings.load()
    row.retry_delays = ""
    row.save()
    # Orthanc goes away: nothing listens at its peer's address any more.
    Peer.objects.filter(name="orthanc").update(port=free_port())
    with pytest.raises(CommandError, match="failed: 0/3.*connection refused"):
        dicom("send", "orthanc", uid)


# --- django-q2 -------------------------------------------------------------------------------------


def test_jobs_submitted_from_the_admin_are_run_by_the_qcluster(an_admin, scp, qcluster, tmp_path):
    make_ct_series(tmp_path / "a", 3)
    store_to_us(scp, tmp_path / "a")
    recorder = RecordingScp().start()
    worker = qcluster()
    try:
        peer = Peer.objects.create(name="rec", ae_title=recorder.ae_title, host="127.0.0.1", port=recorder.port)
        changelist = reverse("admin:dicomnodes_study_changelist")
        an_admin.post(
            changelist,
            {"action": "send_to", "_selected_action": [Study.objects.get().pk], "peer": peer.pk, "apply": 1},
        )
        job = TransferJob.objects.get()
        wait_until(lambda: TransferJob.objects.get(pk=job.pk).is_finished(), 30, message="the job to finish")
    finally:
        recorder.stop()
    job.refresh_from_db()
    assert job.state == TransferState.SUCCEEDED, (job.last_error, worker.log())
    assert len(recorder.received) == 3


def test_a_job_page_is_read_only_and_jobs_are_not_deleted(an_admin, transactional_db):
    peer = Peer.objects.create(name="remote", ae_title="REMOTE", host="127.0.0.1", port=104)
    job = TransferJob.objects.create(kind="move", peer=peer, uids=["1.2.3"])
    page = an_admin.get(reverse("admin:dicomnodes_transferjob_change", args=[job.pk]))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert an_admin.post(reverse("admin:dicomnodes_transferjob_change", args=[job.pk]), {}).status_code == 403
    assert (
        an_admin.post(reverse("admin:dicomnodes_transferjob_delete", args=[job.pk]), {"post": "yes"}).status_code == 403
    )
    assert TransferJob.objects.filter(pk=job.pk).exists()
