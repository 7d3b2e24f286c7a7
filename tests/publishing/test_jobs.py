"""Burn jobs without a network (publishing/tasks.py, triggers.py): staging,
job files, the robot simulator driving them to done and failed, cancel,
resubmit, "no publisher", splitting over several discs."""

from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from dicomnodes.models import AssociationLog, AssociationResult
from publishing import tasks
from publishing.models import BurnJob, JobState, Publisher, PublishingSettings, Trigger
from publishing.triggers import immediate_job, on_association_closed
from tests.support.dicomdata import make_ct_series
from tests.support.publishing import a_publisher, dicomdir_uids, index_files, job_file_lines, sop_uids
from tests.support.robot_simulator import RobotSimulator

pytestmark = pytest.mark.django_db


def an_association(called_ae, count):
    now = timezone.now()
    return AssociationLog.objects.create(
        started_at=now,
        ended_at=now,
        calling_ae="MODALITY1",
        called_ae=called_ae,
        instances_received=count,
        result=AssociationResult.RELEASED,
    )


def received(tmp_path, called_ae, count=3, **kwargs):
    """A series stored over one association to `called_ae`, and the signal runscp sends."""
    files = make_ct_series(tmp_path / f"series-{timezone.now().timestamp()}", count, **kwargs)
    row = an_association(called_ae, count)
    index_files(files, called_ae=called_ae, association=row)
    return files, on_association_closed(AssociationLog, association=row)


def submitted_job(tmp_path, kind="epson", count=3, **publisher_values):
    publisher = a_publisher(kind, tmp_path, **publisher_values)
    files, (pk,) = received(tmp_path, "PACS_E" if kind == "epson" else "PACS_P", count)
    assert tasks.submit(pk) == "submitted"
    return BurnJob.objects.get(pk=pk), files, publisher


def test_an_association_to_pacs_e_makes_one_job_due_now_for_the_epson_publisher(data_dir, tmp_path):
    publisher = a_publisher("epson", tmp_path)
    files, (pk,) = received(tmp_path, "PACS_E")
    job = BurnJob.objects.get(pk=pk)
    assert (job.kind, job.trigger, job.state, job.publisher) == ("epson", Trigger.IMMEDIATE, JobState.DUE, publisher)
    assert {i.sop_instance_uid for i in job.instances.all()} == sop_uids(files)
    assert job.studies.count() == 1 and job.series.count() == 1


def test_plain_ae_titles_and_other_suffixes_make_no_job(data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    assert received(tmp_path, "PACS")[1] is None
    assert received(tmp_path, "PACS_X")[1] is None
    assert received(tmp_path, "OTHER_E")[1] is None
    assert not BurnJob.objects.exists()


def test_submitting_stages_a_dicomdir_and_writes_a_jdf(data_dir, tmp_path):
    job, files, publisher = submitted_job(tmp_path, "epson", copies=2, label_template=r"C:\labels\pacs.tdd")
    assert job.state == JobState.SUBMITTED
    (disc,) = job.discs.all()
    assert Path(disc.folder).parent == data_dir / "publishing"
    assert dicomdir_uids(disc.folder) == sop_uids(files)
    jdf = Path(publisher.job_folder) / f"{disc.robot_job_id}.JDF"
    assert job.files_written == [str(jdf)]
    lines = job_file_lines(jdf)
    assert f"JOB_ID={disc.robot_job_id}" in lines and "COPIES=2" in lines and "DISC_TYPE=CD" in lines
    assert f"DATA={disc.folder}" in lines
    replace = next(line for line in lines if line.startswith("REPLACE_FIELD="))
    merge = Path(replace.split("=", 1)[1]).read_bytes().decode("cp1252")
    assert "PATIENT_NAME=Doe Jane\r\n" in merge and "PATIENT_ID=PAT001\r\n" in merge
    assert "BIRTH_DATE=1970-01-01" in merge and "MODALITY=CT" in merge and "DISC=Disc 1 of 1" in merge
    readme = (Path(disc.folder) / "README.TXT").read_text(encoding="utf-8-sig")
    assert "Patient: Doe Jane (ID PAT001), born 1970-01-01" in readme and "CT CHEST" in readme


@pytest.mark.parametrize("kind", ["epson", "primera"])
def test_the_robot_simulator_drives_a_job_to_done(data_dir, tmp_path, kind):
    job, files, publisher = submitted_job(tmp_path, kind, copies=2)
    robot = RobotSimulator(kind, publisher.job_folder)
    robot.accept()
    assert tasks.poll_job(job) == JobState.SUBMITTED
    robot.burn()
    assert tasks.poll_job(job) == JobState.BURNING
    robot.finish()
    tasks.poll_robots()
    job.refresh_from_db()
    assert (job.state, job.good_discs, job.bad_discs) == (JobState.DONE, 2, 0)
    assert job.robot_status and job.finished_at
    assert not Path(job.discs.get().folder).exists()  # staging removed after success


@pytest.mark.parametrize(("kind", "reason"), [("epson", "error 0301"), ("primera", "Disc could not be recorded")])
def test_the_robot_simulator_drives_a_job_to_failed(data_dir, tmp_path, kind, reason):
    job, files, publisher = submitted_job(tmp_path, kind)
    robot = RobotSimulator(kind, publisher.job_folder)
    robot.accept()
    robot.burn()
    robot.finish(fail=True)
    tasks.poll_robots()
    job.refresh_from_db()
    assert (job.state, job.good_discs, job.bad_discs) == (JobState.FAILED, 0, 1)
    assert reason in job.message
    assert Path(job.discs.get().folder).exists()  # kept for a look and a resubmit


def test_the_simulated_robot_reads_the_ptburn_keys_it_expects(data_dir, tmp_path):
    job, files, publisher = submitted_job(tmp_path, "primera")
    robot = RobotSimulator("primera", publisher.job_folder)
    (sim_job,) = [robot.jobs[j] for j in robot.accept()]
    assert sim_job.first("ClientID") == "PACS" and sim_job.first("DiscType") == "CDR"
    assert sim_job.first("JobID") == job.discs.get().robot_job_id


def test_keep_staging_keeps_the_disc_folder_after_success(data_dir, tmp_path):
    cfg = PublishingSettings.load()
    cfg.keep_staging = True
    cfg.save()
    job, files, publisher = submitted_job(tmp_path, "primera")
    robot = RobotSimulator("primera", publisher.job_folder)
    robot.accept()
    robot.finish()
    assert tasks.poll_job(job) == JobState.DONE
    assert Path(job.discs.get().folder).is_dir()


def test_cancel_before_submission_writes_no_job_file(data_dir, tmp_path):
    publisher = a_publisher("epson", tmp_path)
    _, (pk,) = received(tmp_path, "PACS_TE")
    job = BurnJob.objects.get(pk=pk)
    assert tasks.cancel(job) == "cancelled"
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    BurnJob.objects.filter(pk=pk).update(due_at=timezone.now() - timedelta(seconds=1))
    assert tasks.submit(pk) == "not due"
    assert list(Path(publisher.job_folder).iterdir()) == []


@pytest.mark.parametrize("kind", ["epson", "primera"])
def test_cancel_after_submission_sends_the_robots_cancel_file(data_dir, tmp_path, kind):
    job, files, publisher = submitted_job(tmp_path, kind)
    robot = RobotSimulator(kind, publisher.job_folder)
    robot.accept()
    robot.burn()
    assert tasks.cancel(job) == "cancel sent to the robot"
    assert robot.handle_cancels() == [job.discs.get().robot_job_id]
    tasks.poll_robots()
    job.refresh_from_db()
    assert job.state == JobState.CANCELLED
    assert any(name.endswith((".JCF", ".PTM")) for name in job.files_written)
    if kind == "epson":
        assert list(Path(publisher.job_folder).glob("*.CDN"))


def test_a_done_job_cannot_be_cancelled(data_dir, tmp_path):
    job, files, publisher = submitted_job(tmp_path, "epson")
    robot = RobotSimulator("epson", publisher.job_folder)
    robot.accept()
    robot.finish()
    tasks.poll_job(job)
    assert tasks.cancel(job) == "not cancelled: the job is done"


def test_resubmit_sends_a_failed_job_again_under_new_robot_ids(data_dir, tmp_path, django_capture_on_commit_callbacks):
    job, files, publisher = submitted_job(tmp_path, "epson")
    robot = RobotSimulator("epson", publisher.job_folder)
    robot.accept()
    robot.finish(fail=True)
    tasks.poll_job(job)
    old_id = job.discs.get().robot_job_id
    with django_capture_on_commit_callbacks(execute=False):
        assert tasks.resubmit(job) == "resubmitted"
    assert tasks.submit(job.pk) == "submitted"
    new_disc = job.discs.get()
    assert new_disc.robot_job_id != old_id
    assert (Path(publisher.job_folder) / f"{new_disc.robot_job_id}.JDF").exists()
    assert dicomdir_uids(new_disc.folder) == sop_uids(files)


def test_without_a_publisher_the_job_waits_with_a_clear_message(data_dir, tmp_path):
    files, (pk,) = received(tmp_path, "PACS_P")
    job = BurnJob.objects.get(pk=pk)
    assert job.state == JobState.NO_PUBLISHER
    assert "No enabled default PRIMERA PTBurn publisher is configured" in job.message
    assert job.instances.count() == 3  # the images are stored all the same
    tasks.tick()
    assert BurnJob.objects.get(pk=pk).state == JobState.NO_PUBLISHER
    publisher = a_publisher("primera", tmp_path)
    tasks.tick()
    job.refresh_from_db()
    assert (job.state, job.publisher) == (JobState.SUBMITTED, publisher)
    assert list(Path(publisher.job_folder).glob("*.JRQ"))


def test_a_disabled_publisher_counts_as_none(data_dir, tmp_path):
    a_publisher("epson", tmp_path, enabled=False)
    _, (pk,) = received(tmp_path, "PACS_E")
    assert BurnJob.objects.get(pk=pk).state == JobState.NO_PUBLISHER


def test_over_dvd_capacity_a_job_becomes_several_discs_each_with_its_dicomdir(data_dir, tmp_path):
    from publishing.discs import DISC_ALLOWANCE, on_disc

    files = make_ct_series(tmp_path / "big", 5)
    per_instance = on_disc(files[0].stat().st_size) + 1024
    publisher = a_publisher(
        "primera",
        tmp_path,
        cd_capacity=DISC_ALLOWANCE + per_instance,
        dvd_capacity=DISC_ALLOWANCE + 2 * per_instance,
        label_template=r"C:\labels\pacs.std",
    )
    job = immediate_job("primera", index_files(files), publisher=publisher)
    assert tasks.submit(job.pk) == "submitted"
    discs = list(job.discs.all())
    assert [(d.number, d.count, d.media, d.instance_count) for d in discs] == [
        (1, 3, "dvd", 2),
        (2, 3, "dvd", 2),
        (3, 3, "dvd", 1),
    ]
    listed = [dicomdir_uids(d.folder) for d in discs]
    assert set().union(*listed) == sop_uids(files) and sum(map(len, listed)) == 5
    jrqs = sorted(Path(publisher.job_folder).glob("*.JRQ"))
    assert len(jrqs) == 3
    assert "MergeField=Disc 2 of 3" in job_file_lines(jrqs[1])
    assert "DiscType=DVDR" in job_file_lines(jrqs[0])


def test_a_job_too_big_for_any_disc_fails_with_the_reason(data_dir, tmp_path):
    publisher = a_publisher("epson", tmp_path, cd_capacity=100_000, dvd_capacity=100_000)
    files = make_ct_series(tmp_path / "big", 1, size=256)
    job = immediate_job("epson", index_files(files), publisher=publisher)
    assert tasks.submit(job.pk) == "failed"
    job.refresh_from_db()
    assert job.state == JobState.FAILED and "does not fit on a DVD" in job.message
    assert list(Path(publisher.job_folder).iterdir()) == []


def test_the_robot_sees_the_staging_folder_through_its_share(data_dir, tmp_path):
    job, files, publisher = submitted_job(tmp_path, "epson", robot_staging_folder=r"\\PACS\publishing")
    disc = job.discs.get()
    lines = job_file_lines(Path(publisher.job_folder) / f"{disc.robot_job_id}.JDF")
    assert rf"DATA=\\PACS\publishing\{disc.robot_job_id}" in lines


def test_only_one_default_publisher_per_kind(data_dir, tmp_path):
    from django.db import IntegrityError, transaction

    a_publisher("epson", tmp_path)
    a_publisher("primera", tmp_path)
    with pytest.raises(IntegrityError), transaction.atomic():
        Publisher.objects.create(name="second", kind="epson", is_default=True, job_folder=str(tmp_path))


def test_a_job_left_in_staging_by_a_dead_worker_is_staged_again(data_dir, tmp_path):
    publisher = a_publisher("epson", tmp_path)
    files, (pk,) = received(tmp_path, "PACS_E")
    BurnJob.objects.filter(pk=pk).update(state=JobState.STAGING, updated_at=timezone.now() - timedelta(hours=2))
    tasks.tick()
    job = BurnJob.objects.get(pk=pk)
    assert job.state == JobState.SUBMITTED
    assert len(list(Path(publisher.job_folder).glob("*.JDF"))) == 1


def test_a_job_being_staged_right_now_is_left_alone(data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    files, (pk,) = received(tmp_path, "PACS_E")
    BurnJob.objects.filter(pk=pk).update(state=JobState.STAGING)
    tasks.tick()
    assert BurnJob.objects.get(pk=pk).state == JobState.STAGING


def test_instances_stored_before_are_burned_when_sent_again(data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    files = make_ct_series(tmp_path / "series", 2)
    index_files(files, called_ae="PACS", association=an_association("PACS", 2))
    again = an_association("PACS_E", 2)  # the same instances sent again: duplicates, kept first
    index_files(files, called_ae="PACS_E", association=again)
    (pk,) = on_association_closed(AssociationLog, association=again, sop_instance_uids=sorted(sop_uids(files)))
    assert set(BurnJob.objects.get(pk=pk).instances.values_list("sop_instance_uid", flat=True)) == sop_uids(files)
