"""Transfer jobs (list, progress, create, cancel) and burn jobs (read-only)
over the API."""

import pytest

from dicomnodes.models import TransferJob, TransferState
from publishing.models import BurnJob, Disc, JobState
from tests.support.api import archived

pytestmark = pytest.mark.archive


@pytest.fixture
def a_study(db, data_dir, tmp_path):
    return archived(tmp_path).series.study


# --- transfer jobs -------------------------------------------------------------------------


def test_a_running_job_shows_its_progress(an_api_admin, orthanc_peer):
    job = TransferJob.objects.create(
        kind="send",
        peer=orthanc_peer,
        uids=["1.2.3"],
        state=TransferState.RUNNING,
        total=10,
        done=4,
        failed=1,
        rate=12.5,
    )

    body = an_api_admin.get(f"/api/transfers/{job.pk}/").json()

    assert (body["state"], body["done"], body["failed"], body["total"], body["rate"]) == ("running", 4, 1, 10, 12.5)
    assert body["progress"] == "4/10, 1 failed"
    assert body["peer_name"] == "Orthanc"
    assert body["queue_position"] is None


def test_queued_jobs_show_their_place_in_the_queue_and_can_be_filtered(an_api_admin, orthanc_peer):
    first = TransferJob.objects.create(kind="send", peer=orthanc_peer, uids=["1.2.3"])
    second = TransferJob.objects.create(kind="move", peer=orthanc_peer, uids=["1.2.4"])
    TransferJob.objects.create(kind="send", peer=orthanc_peer, uids=["1.2.5"], state=TransferState.SUCCEEDED)

    queued = an_api_admin.get("/api/transfers/?state=queued").json()["results"]

    assert [(row["id"], row["queue_position"]) for row in queued] == [(second.pk, 2), (first.pk, 1)]
    assert an_api_admin.get("/api/transfers/?kind=move").json()["count"] == 1
    assert an_api_admin.get(f"/api/transfers/?peer={orthanc_peer.pk}").json()["count"] == 3


def test_an_admin_queues_a_send_of_a_stored_study(an_api_admin, orthanc_peer, a_study):
    request = {"kind": "send", "peer": orthanc_peer.pk, "uids": [a_study.study_instance_uid]}

    response = an_api_admin.post("/api/transfers/", request, format="json")

    assert response.status_code == 201, response.json()
    job = TransferJob.objects.get()
    assert (job.state, job.total, job.requested_by.username) == (TransferState.QUEUED, 1, "apiadmin")
    assert response.json()["id"] == job.pk


def test_a_job_the_runner_would_refuse_is_a_400_with_the_reason(an_api_admin, orthanc_peer, db):
    unknown = an_api_admin.post(
        "/api/transfers/", {"kind": "send", "peer": orthanc_peer.pk, "uids": ["1.2.840.99"]}, format="json"
    )
    bad_uid = an_api_admin.post(
        "/api/transfers/", {"kind": "move", "peer": orthanc_peer.pk, "uids": ["not a uid"]}, format="json"
    )
    no_peer = an_api_admin.post("/api/transfers/", {"kind": "send", "peer": 999, "uids": ["1.2.3"]}, format="json")

    assert unknown.status_code == 400 and "stored here" in unknown.json()["detail"]
    assert bad_uid.status_code == 400 and "not a valid UID" in bad_uid.json()["detail"]
    assert no_peer.status_code == 400 and "peer" in no_peer.json()
    assert not TransferJob.objects.exists()


def test_cancelling_a_queued_job(an_api_admin, orthanc_peer):
    job = TransferJob.objects.create(kind="move", peer=orthanc_peer, uids=["1.2.3"])

    response = an_api_admin.post(f"/api/transfers/{job.pk}/cancel/")

    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    job.refresh_from_db()
    assert job.state == TransferState.CANCELLED


def test_cancelling_a_finished_job_is_a_conflict(an_api_admin, orthanc_peer):
    job = TransferJob.objects.create(kind="move", peer=orthanc_peer, uids=["1.2.3"], state=TransferState.SUCCEEDED)

    response = an_api_admin.post(f"/api/transfers/{job.pk}/cancel/")

    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]


def test_a_reader_may_list_jobs_but_not_queue_or_cancel(a_reader, orthanc_peer, a_study):
    job = TransferJob.objects.create(kind="move", peer=orthanc_peer, uids=["1.2.3"])
    request = {"kind": "send", "peer": orthanc_peer.pk, "uids": [a_study.study_instance_uid]}

    assert a_reader.post("/api/transfers/", request, format="json").status_code == 403
    assert a_reader.post(f"/api/transfers/{job.pk}/cancel/").status_code == 403
    assert a_reader.get("/api/transfers/").json()["count"] == 1
    job.refresh_from_db()
    assert job.state == TransferState.QUEUED


def test_anonymous_and_non_staff_clients_may_not_queue_or_cancel(anonymous, a_clerk, orthanc_peer):
    job = TransferJob.objects.create(kind="move", peer=orthanc_peer, uids=["1.2.3"])
    request = {"kind": "move", "peer": orthanc_peer.pk, "uids": ["1.2.3"]}

    assert anonymous.post("/api/transfers/", request, format="json").status_code == 401
    assert a_clerk.post("/api/transfers/", request, format="json").status_code == 403
    assert anonymous.post(f"/api/transfers/{job.pk}/cancel/").status_code == 401
    assert a_clerk.post(f"/api/transfers/{job.pk}/cancel/").status_code == 403
    assert TransferJob.objects.count() == 1


# --- burn jobs ---------------------------------------------------------------------------


def test_burn_jobs_show_their_state_and_discs(a_reader, a_study):
    job = BurnJob.objects.create(kind="primera", trigger="immediate", state=JobState.BURNING, good_discs=1)
    job.studies.add(a_study)
    Disc.objects.create(job=job, number=1, count=1, media="cd", robot_job_id="PACS-1", folder="/x")
    BurnJob.objects.create(kind="epson", trigger="delayed", state=JobState.DONE)

    body = a_reader.get(f"/api/burnjobs/{job.pk}/").json()

    assert (body["state"], body["trigger"], body["good_discs"], body["studies"]) == (
        "burning",
        "immediate",
        1,
        [a_study.pk],
    )
    assert body["discs"] == [
        {
            "number": 1,
            "count": 1,
            "media": "cd",
            "robot_job_id": "PACS-1",
            "state": "staging",
            "good_discs": 0,
            "bad_discs": 0,
        }
    ]
    assert [row["id"] for row in a_reader.get("/api/burnjobs/?state=burning").json()["results"]] == [job.pk]
    assert a_reader.get(f"/api/burnjobs/?study={a_study.pk}").json()["count"] == 1


def test_burn_jobs_are_read_only(an_api_admin, db):
    job = BurnJob.objects.create(kind="epson", trigger="manual")
    assert an_api_admin.post("/api/burnjobs/", {"kind": "epson"}, format="json").status_code == 405
    assert an_api_admin.delete(f"/api/burnjobs/{job.pk}/").status_code == 405
