"""From received images to burn jobs: runscp's `association_closed` signal.

Runs in runscp's index-writer thread, so it only writes rows; staging and
job files are the django-q2 worker's (publishing.tasks).

* `<AE>_E` / `<AE>_P`: one job with every instance of the association, due now.
* `<AE>_TE` / `<AE>_TP`: the instances join the collecting job of their group
  (same Patient ID or Study UID, a setting) and push its due time to
  now + delay; the worker submits it once that time passes (publishing.clock
  says when, to the second).
"""

import datetime
import logging

from django.db import IntegrityError, transaction
from django.utils import timezone

from dicomnodes.models import DicomServerSettings, Instance
from publishing import clock, queueing
from publishing.models import BurnJob, Grouping, JobState, Publisher, PublisherKind, PublishingSettings, Trigger

logger = logging.getLogger(__name__)

SUFFIXES = {  # called AE suffix -> (kind, trigger)
    "_E": (PublisherKind.EPSON, Trigger.IMMEDIATE),
    "_P": (PublisherKind.PRIMERA, Trigger.IMMEDIATE),
    "_TE": (PublisherKind.EPSON, Trigger.DELAYED),
    "_TP": (PublisherKind.PRIMERA, Trigger.DELAYED),
}


def publishing_route(called_ae: str, ae_title: str):
    """(kind, trigger) for a called AE title, None when it is no publishing one."""
    if not called_ae.startswith(ae_title):
        return None
    return SUFFIXES.get(called_ae[len(ae_title) :])


def on_association_closed(sender, association, sop_instance_uids=None, **kwargs):
    """The receiver of dicomnodes.signals.association_closed: every instance
    the association stored goes on the disc, also one stored before."""
    if not association.instances_received:
        return None
    route = publishing_route(association.called_ae, DicomServerSettings.load().our_ae_title())
    if route is None:
        return None
    if sop_instance_uids is None:
        rows = Instance.objects.filter(association=association)
        instances = list(rows.select_related("series__study"))
    else:
        instances = []
        for start in range(0, len(sop_instance_uids), 2000):
            chunk = sop_instance_uids[start : start + 2000]
            instances += Instance.objects.filter(sop_instance_uid__in=chunk).select_related("series__study")
    if len(instances) < association.instances_received:
        logger.warning(
            "association %s to %s: %d of %d instances are no longer in the index and are not on the disc",
            association.pk,
            association.called_ae,
            association.instances_received - len(instances),
            association.instances_received,
        )
    if not instances:
        return None
    kind, trigger = route
    if trigger == Trigger.IMMEDIATE:
        return [immediate_job(kind, instances).pk]
    return [job.pk for job in delayed_jobs(kind, instances)]


def add_content(job, instances):
    job.instances.add(*instances)
    job.series.add(*{i.series for i in instances})
    job.studies.add(*{i.series.study for i in instances})


def immediate_job(kind, instances, *, trigger=Trigger.IMMEDIATE, publisher=None):
    """A job due now (also the admin's manual jobs, with their publisher)."""
    publisher = publisher or Publisher.default_for(kind)
    with transaction.atomic():
        job = BurnJob.objects.create(
            kind=kind,
            publisher=publisher,
            trigger=trigger,
            state=JobState.DUE if publisher else JobState.NO_PUBLISHER,
            due_at=timezone.now(),
            message="" if publisher else queueing.no_publisher_message(kind),
        )
        add_content(job, instances)
        if publisher:
            transaction.on_commit(lambda: queueing.queue_submit(job.pk))
        else:
            transaction.on_commit(queueing.ensure_tick)
    logger.info("burn job %s: %d instances for %s (%s)", job.pk, len(instances), kind, job.get_state_display())
    return job


def group_key(grouping, instance) -> str:
    study = instance.series.study
    if grouping == Grouping.PATIENT_ID and study.patient_id:
        return f"patient:{study.patient_id}"
    return f"study:{study.study_instance_uid}"  # also when the Patient ID is empty


def delayed_jobs(kind, instances):
    """Add the instances to their groups' collecting jobs, each due at now + delay."""
    cfg = PublishingSettings.load()
    groups = {}
    for instance in instances:
        groups.setdefault(group_key(cfg.grouping, instance), []).append(instance)
    jobs = []
    for key, members in groups.items():
        due = timezone.now() + datetime.timedelta(seconds=cfg.delay_seconds)
        job = join_group(kind, key, members, due)
        jobs.append(job)
        transaction.on_commit(lambda pk=job.pk, due=due: queueing.schedule_submit(pk, due))
        transaction.on_commit(lambda pk=job.pk, due=due: clock.arm(pk, due))
        logger.info("burn job %s: %d more instances, due at %s", job.pk, len(members), due.isoformat())
    return jobs


def join_group(kind, key, instances, due, *, attempts=3):
    """The group's collecting job with the instances added and its due time
    pushed; a new collecting job when there is none.

    The push is a conditional update (state still collecting) in the same
    transaction as the additions: the worker claims a due job with a
    conditional update too, so either the job is pushed before the claim
    (and is no longer due) or claimed before the push (and a new job opens);
    the instances never land in a job already being staged.  Two processes
    opening the same group meet the unique constraint and the loser retries.
    """
    for _ in range(attempts):
        try:
            with transaction.atomic():
                job = BurnJob.objects.filter(kind=kind, group_key=key, state=JobState.COLLECTING).first()
                pushed = job is not None and (
                    BurnJob.objects.filter(pk=job.pk, state=JobState.COLLECTING).update(
                        due_at=due, updated_at=timezone.now()
                    )
                    == 1
                )
                if not pushed:
                    job = BurnJob.objects.create(
                        kind=kind, trigger=Trigger.DELAYED, group_key=key, state=JobState.COLLECTING, due_at=due
                    )
                add_content(job, instances)
                return job
        except IntegrityError:
            continue
    raise RuntimeError(f"could not open a collecting job for group {key}")
