"""Publishing end to end: DCMTK storescu sends to the running runscp under
PACS_E / PACS_P / PACS_TE / PACS_TP; the django-q2 worker (a real qcluster)
or the task functions stage the discs; a simulated robot reads the job files.

Personas: MODALITY1 (a CT scanner), an EPSON and a PRIMERA disc robot.
"""

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone
from django_q.models import Schedule

from publishing import tasks
from publishing.models import BurnJob, Grouping, JobState, PublishingSettings, Trigger
from tests.support.dicomdata import make_ct_series
from tests.support.processes import wait_until
from tests.support.publishing import a_publisher, dcmdump_dicomdir, dicomdir_uids, job_file_lines, sop_uids
from tests.support.robot_simulator import RobotSimulator

JOB_EXT = {"epson": ".JDF", "primera": ".JRQ"}
SUFFIX = {"epson": "E", "primera": "P"}


def delayed_settings(delay=3, grouping=Grouping.PATIENT_ID):
    cfg = PublishingSettings.load()
    cfg.delay_seconds = delay
    cfg.grouping = grouping
    cfg.save()
    return cfg


def sent(scp, files, called):
    proc = scp.store(*files, called=called)
    assert proc.returncode == 0, proc.stderr
    return files


def jobs_with(count):
    wait_until(lambda: BurnJob.objects.count() >= count, 20, message=f"{count} burn job(s)")
    return list(BurnJob.objects.order_by("pk"))


def job_files(publisher):
    return sorted(Path(publisher.job_folder).glob("*" + JOB_EXT[publisher.kind]))


def data_folder(kind, job_file):
    key = "DATA=" if kind == "epson" else "Data="
    return Path(next(line for line in job_file_lines(job_file) if line.startswith(key)).split("=", 1)[1])


def test_a_stored_series_sent_again_to_the_immediate_ae_is_burned_whole(scp, data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    files = sent(scp, make_ct_series(tmp_path / "series", 3), "PACS")
    sent(scp, files, "PACS_E")  # duplicates: kept first, but this association brought them
    (job,) = jobs_with(1)
    assert set(job.instances.values_list("sop_instance_uid", flat=True)) == sop_uids(files)


@pytest.mark.parametrize("kind", ["epson", "primera"])
def test_a_series_sent_to_the_immediate_ae_becomes_a_job_file_whose_dicomdir_lists_it(
    scp, qcluster, data_dir, tmp_path, kind
):
    publisher = a_publisher(kind, tmp_path)
    worker = qcluster()
    files = sent(scp, make_ct_series(tmp_path / "series", 4), f"PACS_{SUFFIX[kind]}")
    wait_until(lambda: job_files(publisher), 60, message=f"a {JOB_EXT[kind]} job file\n{worker.log()}")
    (job_file,) = job_files(publisher)
    disc = data_folder(kind, job_file)
    assert dicomdir_uids(disc) == sop_uids(files)
    assert dcmdump_dicomdir(disc).count("ReferencedSOPInstanceUIDInFile") == 4
    (job,) = BurnJob.objects.all()
    assert (job.trigger, job.state, job.publisher_id) == (Trigger.IMMEDIATE, JobState.SUBMITTED, publisher.pk)
    # The robot's status is read back by runscp's publishing clock (every
    # 5 s while a job is on a robot), not only by the worker's minute tick.
    robot = RobotSimulator(kind, publisher.job_folder)
    robot.accept()
    robot.burn()
    wait_until(lambda: BurnJob.objects.get().state == JobState.BURNING, 10, message="the job burning")
    robot.finish()
    wait_until(lambda: BurnJob.objects.get().state == JobState.DONE, 10, message="the job done")
    job.refresh_from_db()
    assert job.good_discs == 1


def test_two_associations_to_pacs_e_make_two_discs(scp, data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    sent(scp, make_ct_series(tmp_path / "one", 2), "PACS_E")
    sent(scp, make_ct_series(tmp_path / "two", 2), "PACS_E")
    first, second = jobs_with(2)
    assert first.instances.count() == second.instances.count() == 2


def test_images_sent_to_the_plain_ae_title_are_not_burned(scp, data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    sent(scp, make_ct_series(tmp_path / "series", 2), "PACS")
    time.sleep(1)
    assert not BurnJob.objects.exists()


def test_with_no_publisher_the_images_are_stored_and_the_job_waits(scp, qcluster, data_dir, tmp_path):
    from dicomnodes.models import Instance

    worker = qcluster()
    files = sent(scp, make_ct_series(tmp_path / "series", 2), "PACS_P")
    (job,) = jobs_with(1)
    assert job.state == JobState.NO_PUBLISHER and "No enabled default PRIMERA" in job.message
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == sop_uids(files)

    # An EPSON robot does not help a _P job; a PRIMERA one, once saved as
    # the default, gets it at once (not at the worker's next minute tick).
    a_publisher("epson", tmp_path)
    publisher = a_publisher("primera", tmp_path, is_default=False)
    time.sleep(1)
    assert BurnJob.objects.get().state == JobState.NO_PUBLISHER
    publisher.is_default = True
    publisher.save()
    wait_until(lambda: job_files(publisher), 10, message=f"the .JRQ of the waiting job\n{worker.log()}")
    job.refresh_from_db()
    assert (job.state, job.publisher_id) == (JobState.SUBMITTED, publisher.pk)
    assert "No enabled" not in job.message
    assert dicomdir_uids(data_folder("primera", job_files(publisher)[0])) == sop_uids(files)


def test_two_series_sent_one_second_apart_to_pacs_te_make_one_job(scp, data_dir, tmp_path):
    publisher = a_publisher("epson", tmp_path)
    delayed_settings(delay=3)
    one = sent(scp, make_ct_series(tmp_path / "s1", 2, study_uid="1.2.3.4", series_number=1), "PACS_TE")
    (job,) = jobs_with(1)
    first_due = job.due_at
    time.sleep(1)
    two = sent(scp, make_ct_series(tmp_path / "s2", 3, study_uid="1.2.3.4", series_number=2), "PACS_TE")
    wait_until(lambda: BurnJob.objects.get().instances.count() == 5, message="the second series in the job")
    job.refresh_from_db()
    assert (job.trigger, job.state) == (Trigger.DELAYED, JobState.COLLECTING)
    assert job.due_at >= first_due + timedelta(seconds=1)  # the wait started again
    assert tasks.submit_due() == []  # not yet due
    wait_until(lambda: tasks.submit_due() == [job.pk], 10, message="the job to become due")
    (job_file,) = job_files(publisher)
    assert dicomdir_uids(data_folder("epson", job_file)) == sop_uids(one + two)

    # A series after submission opens a second job.
    three = sent(scp, make_ct_series(tmp_path / "s3", 1, study_uid="1.2.3.4", series_number=3), "PACS_TE")
    first, second = jobs_with(2)
    assert first.state == JobState.SUBMITTED and second.state == JobState.COLLECTING
    assert {i.sop_instance_uid for i in second.instances.all()} == sop_uids(three)


@pytest.mark.parametrize(
    ("grouping", "jobs"),
    [(Grouping.PATIENT_ID, 1), (Grouping.STUDY_UID, 2)],
)
def test_grouping_decides_whether_two_studies_of_one_patient_share_a_disc(scp, data_dir, tmp_path, grouping, jobs):
    a_publisher("primera", tmp_path)
    delayed_settings(delay=60, grouping=grouping)
    sent(scp, make_ct_series(tmp_path / "study1", 2, patient_id="PAT9"), "PACS_TP")
    sent(scp, make_ct_series(tmp_path / "study2", 2, patient_id="PAT9"), "PACS_TP")
    wait_until(lambda: sum(j.instances.count() for j in BurnJob.objects.all()) == 4, message="4 instances in jobs")
    assert BurnJob.objects.filter(state=JobState.COLLECTING).count() == jobs
    assert {j.studies.count() for j in BurnJob.objects.all()} == ({2} if jobs == 1 else {1})


def test_a_restart_between_two_series_keeps_the_pending_group_and_its_due_time(start_scp, data_dir, tmp_path):
    a_publisher("epson", tmp_path)
    delayed_settings(delay=60)
    scp = start_scp()
    sent(scp, make_ct_series(tmp_path / "s1", 2, study_uid="1.2.3.5"), "PACS_TE")
    (job,) = jobs_with(1)
    due = job.due_at
    schedule = Schedule.objects.get(name=f"publishing-job-{job.pk}")
    assert schedule.next_run == due  # the worker's timer is a row too
    scp.stop()

    scp = start_scp()
    job.refresh_from_db()
    assert (job.state, job.due_at) == (JobState.COLLECTING, due)
    sent(scp, make_ct_series(tmp_path / "s2", 2, study_uid="1.2.3.5", series_number=2), "PACS_TE")
    wait_until(lambda: BurnJob.objects.get().instances.count() == 4, message="the second series joined")
    job.refresh_from_db()
    assert job.due_at > due
    assert Schedule.objects.get(name=f"publishing-job-{job.pk}").next_run == job.due_at


def test_a_restarted_runscp_submits_a_pending_group_at_its_due_time(start_scp, qcluster, data_dir, tmp_path):
    publisher = a_publisher("epson", tmp_path)
    delayed_settings(delay=6)
    scp = start_scp()
    files = sent(scp, make_ct_series(tmp_path / "s1", 2), "PACS_TE")
    (job,) = jobs_with(1)
    scp.stop()
    start_scp()  # its clock arms the collecting job again, from the row
    worker = qcluster()
    left = (job.due_at - timezone.now()).total_seconds()
    wait_until(lambda: job_files(publisher), max(left, 0) + 8, message=f"the .JDF on time\n{worker.log()}")
    (job_file,) = job_files(publisher)
    assert dicomdir_uids(data_folder("epson", job_file)) == sop_uids(files)


def test_the_worker_submits_a_delayed_job_at_its_due_time_by_itself(scp, qcluster, data_dir, tmp_path):
    publisher = a_publisher("primera", tmp_path)
    delayed_settings(delay=3)
    worker = qcluster()
    files = sent(scp, make_ct_series(tmp_path / "s1", 2), "PACS_TP")
    (job,) = jobs_with(1)
    # runscp's timer queues the submission at the due time; django-q2's
    # scheduler alone (every 30 s) would be up to 30 s late.
    wait_until(lambda: job_files(publisher), 3 + 8, message=f"the .JRQ of the delayed job\n{worker.log()}")
    job.refresh_from_db()
    assert job.state == JobState.SUBMITTED
    assert job.submitted_at >= job.due_at
    (job_file,) = job_files(publisher)
    assert dicomdir_uids(data_folder("primera", job_file)) == sop_uids(files)


def test_a_delayed_job_whose_runscp_stopped_is_submitted_by_its_schedule(scp, qcluster, data_dir, tmp_path):
    publisher = a_publisher("primera", tmp_path)
    delayed_settings(delay=2)
    files = sent(scp, make_ct_series(tmp_path / "s1", 2), "PACS_TP")
    jobs_with(1)
    scp.stop()  # its timer goes with it; the schedule row stays
    worker = qcluster()  # django-q2's scheduler looks at due schedules every 30 s
    wait_until(lambda: job_files(publisher), 90, message=f"the .JRQ of the delayed job\n{worker.log()}")
    (job_file,) = job_files(publisher)
    assert dicomdir_uids(data_folder("primera", job_file)) == sop_uids(files)
    assert BurnJob.objects.get().state == JobState.SUBMITTED
