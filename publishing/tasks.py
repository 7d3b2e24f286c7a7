"""The django-q2 side of publishing: submit due jobs, read the robots back.

* `submit(pk)` stages a due job's discs and writes its job files (queued at
  once for _E/_P and manual jobs, scheduled at the due time for _TE/_TP);
* `tick()` runs every minute: submits whatever is overdue (a restart of any
  process loses nothing: due times are rows), retries jobs that waited for a
  publisher (also queued when a default publisher is saved), and reads the
  robots' status into the jobs;
* `cancel(job)` / `resubmit(job)` are the admin's actions.
"""

import datetime
import logging
import shutil
import uuid
from pathlib import Path

from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task

from dicomnodes.models import DicomServerSettings
from publishing import robots
from publishing.discs import DiscError, Item, folder_size, plan_discs, stage_disc
from publishing.labels import disc_facts, merge_values, readme_text
from publishing.models import (
    ACTIVE_STATES,
    BurnJob,
    Disc,
    JobState,
    Publisher,
    PublishingSettings,
)
from publishing.queueing import RETRY_WAITING_TASK, no_publisher_message, queue_submit

logger = logging.getLogger(__name__)

# A job left in "staging" this long was abandoned by a worker that died (the
# django-q2 task time-out is an hour too); the tick makes it due again.
STAGING_LEASE = datetime.timedelta(hours=1)


def tick():
    # django-q2's worker closes stale connections before each task.
    recovered = recover_abandoned()
    submitted = submit_due()
    waited = retry_waiting()
    polled = poll_robots()
    return (
        f"publishing: {recovered} recovered, {len(submitted)} submitted, "
        f"{waited} publishers found, {polled} jobs polled"
    )


def recover_abandoned():
    stale = timezone.now() - STAGING_LEASE
    return BurnJob.objects.filter(state=JobState.STAGING, updated_at__lt=stale).update(
        state=JobState.DUE, message="staging was interrupted; staged again", updated_at=timezone.now()
    )


def submit_due():
    now = timezone.now()
    due = BurnJob.objects.filter(Q(state=JobState.DUE) | Q(state=JobState.COLLECTING, due_at__lte=now))
    return [pk for pk in due.values_list("pk", flat=True) if submit(pk) == "submitted"]


def on_publisher_saved(sender, instance, **kwargs):
    """A default publisher added or enabled: jobs waiting for one go now,
    not at the next tick."""
    if not (instance.enabled and instance.is_default):
        return
    if BurnJob.objects.filter(state=JobState.NO_PUBLISHER, kind=instance.kind).exists():
        transaction.on_commit(lambda: async_task(RETRY_WAITING_TASK))


def retry_waiting():
    """Jobs in "no publisher" whose kind has a default publisher now."""
    count = 0
    for job in BurnJob.objects.filter(state=JobState.NO_PUBLISHER):
        publisher = Publisher.default_for(job.kind)
        if publisher is None:
            continue
        if BurnJob.objects.filter(pk=job.pk, state=JobState.NO_PUBLISHER).update(
            state=JobState.DUE, publisher=publisher, message="", updated_at=timezone.now()
        ):
            count += 1
            submit(job.pk)
    return count


# --- Submitting ---------------------------------------------------------------------------------


def submit(pk) -> str:
    """Stage a due job and hand it to its robot.

    1. claim it: due (or collecting and past its due time) -> staging, by a
       conditional update: the scheduled task, the tick and an admin
       resubmit may all try, and a new series may push the due time at the
       same moment; one wins;
    2. find its publisher (none: "no publisher", it waits);
    3. plan the discs by size and stage each (DICOMDIR, README, viewer);
    4. staging -> submitted (conditional: a cancel while staging wins), then
       write one job file per disc into the hot folder.
    """
    now = timezone.now()
    claimed = BurnJob.objects.filter(
        Q(pk=pk) & (Q(state=JobState.DUE) | Q(state=JobState.COLLECTING, due_at__lte=now))
    ).update(state=JobState.STAGING, updated_at=now)
    if not claimed:
        return "not due"
    job = BurnJob.objects.select_related("publisher").get(pk=pk)
    publisher = job.publisher if job.publisher and job.publisher.enabled else Publisher.default_for(job.kind)
    if publisher is None:
        BurnJob.objects.filter(pk=pk, state=JobState.STAGING).update(
            state=JobState.NO_PUBLISHER, publisher=None, message=no_publisher_message(job.kind)
        )
        logger.warning("burn job %s waits: no %s publisher", pk, job.kind)
        return "no publisher"
    job.publisher = publisher
    job.attempts += 1
    job.save(update_fields=["publisher", "attempts", "updated_at"])
    try:
        specs = stage_job(job, publisher)
    except (DiscError, OSError) as exc:
        return _fail(job, f"could not prepare the discs: {exc}")
    if not BurnJob.objects.filter(pk=pk, state=JobState.STAGING).update(
        state=JobState.SUBMITTED, submitted_at=timezone.now(), updated_at=timezone.now()
    ):
        remove_staging(job)
        return "cancelled while staging"
    written = []
    try:
        for disc, spec in specs:
            path = robots.write_job(publisher.kind, publisher.job_folder, spec, encoding=publisher.encoding)
            disc.job_file = str(path)
            disc.state = JobState.SUBMITTED
            disc.save(update_fields=["job_file", "state"])
            written.append(str(path))
    except OSError as exc:
        BurnJob.objects.filter(pk=pk).update(files_written=written)
        return _fail(job, f"could not write the job file into {publisher.job_folder}: {exc}")
    job.refresh_from_db()
    job.files_written = written
    job.robot_status = "submitted"
    job.save(update_fields=["files_written", "robot_status", "updated_at"])
    logger.info("burn job %s submitted to %s: %d disc(s)", pk, publisher, len(specs))
    if job.state == JobState.CANCELLED:  # cancelled between the two updates: tell the robot too
        send_cancel(job)
    return "submitted"


def _fail(job, message):
    BurnJob.objects.filter(pk=job.pk).exclude(state=JobState.CANCELLED).update(
        state=JobState.FAILED, message=message, finished_at=timezone.now(), updated_at=timezone.now()
    )
    logger.error("burn job %s failed: %s", job.pk, message)
    return "failed"


def ordered_instances(job):
    return list(
        job.instances.select_related("series__study").order_by(
            "series__study__patient_id",
            "series__study__study_date",
            "series__study__study_instance_uid",
            "series__series_number",
            "series__series_instance_uid",
            "instance_number",
            "sop_instance_uid",
        )
    )


def stage_job(job, publisher):
    """Plan and stage the job's discs; returns [(Disc, JobSpec)]."""
    cfg = PublishingSettings.load()
    staging = cfg.staging_path()
    staging.mkdir(parents=True, exist_ok=True)
    viewer = Path(cfg.viewer_folder) if cfg.viewer_folder else None
    if viewer and not viewer.is_dir():
        raise DiscError(f"the viewer folder {viewer} does not exist")
    instances = ordered_instances(job)
    if not instances:
        raise DiscError("the job has no instances")
    by_pk = {i.pk: i for i in instances}
    items = []
    for instance in instances:
        path = Path(instance.path)
        if not path.is_file():
            raise DiscError(f"the stored file of instance {instance.pk} is missing")
        items.append(Item(instance.pk, path, path.stat().st_size))
    media, groups = plan_discs(
        items,
        disc_type=publisher.disc_type,
        cd_capacity=publisher.cd_capacity,
        dvd_capacity=publisher.dvd_capacity,
        extra=folder_size(viewer),
    )
    remove_staging(job)  # a resubmission starts afresh
    job.discs.all().delete()
    base = f"PACS{job.pk:05d}"
    job.robot_job_id = f"{base}-{uuid.uuid4().hex[:6].upper()}"
    job.message = f"{len(groups)} {media.upper()}(s)"
    job.save(update_fields=["robot_job_id", "message", "updated_at"])
    ae_title = DicomServerSettings.load().our_ae_title()
    result = []
    for number, group in enumerate(groups, start=1):
        members = [by_pk[item.pk] for item in group]
        facts = disc_facts(members, number=number, count=len(groups))
        job_id = f"{job.robot_job_id}-{number}"  # ≤ 40 characters of [A-Z0-9-]: both robots' rules
        volume = f"{base}_{number}"
        folder = staging / job_id
        size = stage_disc(
            folder,
            [item.path for item in group],
            fileset_id=volume,
            readme=readme_text(facts, ae_title=ae_title),
            viewer=viewer,
            fallback_date=timezone.localdate().strftime("%Y%m%d"),
        )
        disc = Disc.objects.create(
            job=job,
            number=number,
            count=len(groups),
            media=media,
            robot_job_id=job_id,
            folder=str(folder),
            size=size,
            instance_count=len(group),
        )
        root = publisher.robot_staging_folder
        spec = robots.JobSpec(
            job_id=job_id,
            data_folder=robots.robot_path(folder, staging, root),
            media=media,
            volume=volume,
            copies=publisher.copies,
            robot_name=publisher.robot_name,
            label=publisher.label_template,
            merge_values=merge_values(facts, publisher.merge_fields.split()),
        )
        if publisher.kind == "epson" and spec.label and spec.merge_values:
            merge_file = staging / f"{job_id}-label.txt"
            robots.write_atomically(staging, merge_file.name, robots.merge_file_text(spec), publisher.encoding)
            spec.merge_file = robots.robot_path(merge_file, staging, root)
        result.append((disc, spec))
    return result


def remove_staging(job):
    """Delete the job's disc folders and label files from the staging folder."""
    staging = PublishingSettings.load().staging_path()
    for disc in job.discs.all():
        folder = Path(disc.folder)
        if folder.parent == staging and folder.name == disc.robot_job_id:  # only what we made
            shutil.rmtree(folder, ignore_errors=True)
        (staging / f"{disc.robot_job_id}-label.txt").unlink(missing_ok=True)


# --- Reading the robots back --------------------------------------------------------------------


def poll_robots() -> int:
    jobs = BurnJob.objects.filter(state__in=ACTIVE_STATES).select_related("publisher")
    count = 0
    for job in jobs:
        if job.publisher is not None:
            poll_job(job)
            count += 1
    return count


def poll_job(job):
    """Map what the robot says of each disc to the disc and the job.

    The job is failed when a disc failed, done when every disc is, burning
    when one is being burned, else still submitted."""
    publisher = job.publisher
    discs = list(job.discs.all())
    for disc in discs:
        status = robots.read_status(
            publisher.kind,
            disc.robot_job_id,
            job_folder=publisher.job_folder,
            status_location=publisher.status_location,
            robot_name=publisher.robot_name,
            encoding=publisher.encoding,
        )
        if status.state is not None:
            disc.state = status.state
        disc.robot_status = status.text[:500]
        disc.good_discs, disc.bad_discs = status.good, status.bad
        disc.save(update_fields=["state", "robot_status", "good_discs", "bad_discs"])
    states = {d.state for d in discs}
    if JobState.FAILED in states:
        state = JobState.FAILED
    elif states == {JobState.DONE}:
        state = JobState.DONE
    elif JobState.BURNING in states or JobState.DONE in states:
        state = JobState.BURNING
    else:
        state = JobState.SUBMITTED
    text = " | ".join(f"disc {d.number}/{d.count}: {d.robot_status or d.get_state_display()}" for d in discs)
    values = dict(
        robot_status=text,
        good_discs=sum(d.good_discs for d in discs),
        bad_discs=sum(d.bad_discs for d in discs),
        updated_at=timezone.now(),
    )
    if state != job.state:
        values["state"] = state
    if state in (JobState.DONE, JobState.FAILED):
        values["finished_at"] = timezone.now()
        if state == JobState.FAILED:
            values["message"] = "the robot reported an error: " + text
    # Only while still active: a cancel in the meantime stays a cancel.
    if BurnJob.objects.filter(pk=job.pk, state__in=ACTIVE_STATES).update(**values) and state == JobState.DONE:
        logger.info("burn job %s done", job.pk)
        if not PublishingSettings.load().keep_staging:
            remove_staging(job)
    return state


# --- The admin's actions ------------------------------------------------------------------------


def cancel(job) -> str:
    """Cancel a job; a submitted one also gets the robot's cancel file."""
    now = timezone.now()
    waiting = (JobState.COLLECTING, JobState.DUE, JobState.NO_PUBLISHER, JobState.STAGING)
    if BurnJob.objects.filter(pk=job.pk, state__in=waiting).update(
        state=JobState.CANCELLED, message="cancelled before submission", finished_at=now, updated_at=now
    ):
        Schedule.objects.filter(name=f"publishing-job-{job.pk}").delete()
        if job.state != JobState.STAGING:  # the worker cleans up after itself
            remove_staging(job)
        return "cancelled"
    if BurnJob.objects.filter(pk=job.pk, state__in=ACTIVE_STATES).update(
        state=JobState.CANCELLED, message="cancel sent to the robot", finished_at=now, updated_at=now
    ):
        job.refresh_from_db()
        send_cancel(job)
        return "cancel sent to the robot"
    job.refresh_from_db(fields=["state"])
    return f"not cancelled: the job is {job.get_state_display()}"


def send_cancel(job):
    publisher = job.publisher
    written = list(job.files_written)
    for disc in job.discs.exclude(job_file=""):
        try:
            path = robots.write_cancel(
                publisher.kind, publisher.job_folder, disc.robot_job_id, encoding=publisher.encoding
            )
            written.append(str(path))
        except OSError as exc:
            logger.error("burn job %s: could not write the cancel file: %s", job.pk, exc)
    BurnJob.objects.filter(pk=job.pk).update(files_written=written)


def resubmit(job) -> str:
    """A failed, cancelled, done or waiting job goes to the robot again (new robot job IDs)."""
    allowed = (JobState.FAILED, JobState.CANCELLED, JobState.DONE, JobState.NO_PUBLISHER)
    now = timezone.now()
    if not BurnJob.objects.filter(pk=job.pk, state__in=allowed).update(
        state=JobState.DUE, due_at=now, message="resubmitted", finished_at=None, updated_at=now
    ):
        job.refresh_from_db(fields=["state"])
        return f"not resubmitted: the job is {job.get_state_display()}"
    transaction.on_commit(lambda: queue_submit(job.pk))
    return "resubmitted"


def countdown(job) -> str:
    seconds = job.seconds_to_due()
    if job.state != JobState.COLLECTING or seconds is None:
        return ""
    if seconds <= 0:
        return "due now"
    return f"in {datetime.timedelta(seconds=round(seconds))}"
