"""The audit events of work done away from any request: a burn job handed
to its robot, a transfer job that the django-q2 worker ran to its end —
one event each, however often the rows are saved; and the daily pruning
of old events."""

import datetime as dt

import pytest
from django.utils import timezone

from dicomnodes.models import Peer, TransferState
from dicomnodes.transfers.jobs import submit_job
from pacs_site import audit, retention
from pacs_site.audit import Action
from pacs_site.models import AuditEvent, AuditSettings
from publishing.models import BurnJob
from tests.publishing.test_jobs import submitted_job
from tests.support.portal import store_study
from tests.support.processes import wait_until
from tests.support.transfer import RecordingScp


@pytest.mark.django_db
def test_a_burn_job_submitted_is_one_event_with_its_study_and_patient(data_dir, tmp_path):
    job, files, publisher = submitted_job(tmp_path, count=2)
    (event,) = AuditEvent.objects.filter(action=Action.BURN)
    study = job.instances.first().series.study
    assert (event.patient_id, event.study_instance_uid) == (study.patient_id, study.study_instance_uid)
    assert event.patient_id
    assert event.details["job"] == job.pk and event.details["discs"] == 1
    assert event.details["publisher"] == str(publisher)
    # Later saves of the job (robot status, discs counted) are no burn of their own.
    job.robot_status = "burning"
    job.good_discs = 1
    job.save()
    BurnJob.objects.get(pk=job.pk).save(update_fields=["robot_status", "updated_at"])
    assert AuditEvent.objects.filter(action=Action.BURN).count() == 1


@pytest.mark.archive
def test_a_transfer_job_the_worker_ran_is_one_send_event(qcluster, data_dir, tmp_path, django_user_model):
    recorder = RecordingScp().start()
    try:
        peer = Peer.objects.create(name="recorder", ae_title=recorder.ae_title, host="127.0.0.1", port=recorder.port)
        study = store_study(tmp_path, series=1, per_series=2, patient_id="SEND1")
        user = django_user_model.objects.create_user("sender", password=None, is_staff=True)
        qcluster()
        job = submit_job(kind="send", peer=peer, uids=[study.study_instance_uid], requested_by=user)
        wait_until(lambda: AuditEvent.objects.filter(action=Action.SEND).exists(), 60, message="the send event")
        job.refresh_from_db()
        assert job.state == TransferState.SUCCEEDED, job.last_error
        assert len(recorder.received) == 2
        # The worker runs the transfer task again every minute and when kicked: no second event.
        other = store_study(tmp_path, series=1, per_series=1, patient_id="SEND2")
        submit_job(kind="send", peer=peer, uids=[other.study_instance_uid], requested_by=user)
        wait_until(lambda: AuditEvent.objects.filter(action=Action.SEND).count() == 2, 60, message="a second job")
    finally:
        recorder.stop()
    first, second = AuditEvent.objects.filter(action=Action.SEND).order_by("id")
    assert (first.actor, first.actor_kind, first.address) == ("sender", "user", "127.0.0.1")
    assert (first.study_instance_uid, first.patient_id, first.outcome) == (study.study_instance_uid, "SEND1", 0)
    assert (first.details["job"], first.details["done"], first.details["peer"]) == (job.pk, 2, "RECORDER")
    assert second.details["job"] != job.pk


@pytest.mark.django_db
def test_events_older_than_the_retention_days_are_pruned_daily():
    AuditSettings.objects.update_or_create(pk=1, defaults={"retention_days": 30})
    old = audit.record(Action.LOGIN, actor="old")
    AuditEvent.objects.filter(pk=old.pk).update(at=timezone.now() - dt.timedelta(days=31))
    audit.record(Action.LOGIN, actor="new")
    done = retention.prune_all()
    assert done["audit events"] == "1 audit events deleted"
    assert list(AuditEvent.objects.values_list("actor", flat=True)) == ["new"]
