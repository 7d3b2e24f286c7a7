"""The audit events that come from signals, so that the code they audit
needs no line of its own (connected in PacsSiteConfig.ready()):

- logins and failed logins (django.contrib.auth's signals);
- any add, change or delete in the admin (its LogEntry rows, post_save);
- a burn job handed to its robot (publishing's BurnJob, post_save of the
  save that records the job files written: once per submission);
- a transfer job that ended (the runner ends jobs with queryset updates, so
  no post_save: after each run of the transfer task in a django-q2 worker,
  the jobs that ended and have no event yet are recorded, once each);
- the end of an incoming association (dicomnodes' association_closed, see
  pacs_site/audit_dicom.py).
"""

import datetime
import logging

from django.contrib import admin
from django.contrib.admin.actions import delete_selected
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.db import IntegrityError, transaction
from django.db.models.signals import post_save
from django.utils import timezone
from django_q.signals import post_execute_in_worker

from dicomnodes.models import Study
from dicomnodes.signals import association_closed
from dicomnodes.transfers.models import FINISHED_STATES, TransferJob, TransferKind, TransferState
from pacs_site import audit, audit_dicom
from pacs_site.audit import Action
from pacs_site.models import AuditEvent, AuditMark, AuditOutcome, AuditSettings
from publishing.models import BurnJob, JobState

logger = logging.getLogger(__name__)

TRANSFER_TASK = "dicomnodes.transfers.jobs.run_next"


def connect():
    user_logged_in.connect(on_login, dispatch_uid="audit.login")
    user_login_failed.connect(on_login_failed, dispatch_uid="audit.login_failed")
    post_save.connect(on_admin_log_entry, sender=LogEntry, dispatch_uid="audit.admin")
    admin.site.add_action(delete_selected_audited, "delete_selected")
    post_save.connect(audit.forget_settings, sender=AuditSettings, dispatch_uid="audit.settings")
    post_save.connect(on_burn_job_saved, sender=BurnJob, dispatch_uid="audit.burn")
    post_execute_in_worker.connect(on_task_done, dispatch_uid="audit.transfers")
    association_closed.connect(audit_dicom.on_association_closed, dispatch_uid="audit.association")


# --- logins ----------------------------------------------------------------------------------


def on_login(sender, request, user, **kwargs):
    audit.record(
        Action.LOGIN,
        actor=user.get_username(),
        actor_kind="user",
        address=audit.client_address(request) if request is not None else "",
        description=f"{user.get_username()} logged in",
    )


def on_login_failed(sender, credentials, request=None, **kwargs):
    # `credentials` has the password replaced by Django's cleansing; only the name is kept.
    name = str(credentials.get("username", "") or "")[:150]
    audit.record(
        Action.LOGIN_FAILED,
        actor=name,
        actor_kind="user",
        address=audit.client_address(request) if request is not None else "",
        outcome=AuditOutcome.MINOR_FAILURE,
        description=f"failed login as {name or '(no name)'}",
    )


# --- the admin -------------------------------------------------------------------------------

_VERBS = {ADDITION: "added", CHANGE: "changed", DELETION: "deleted"}


def on_admin_log_entry(sender, instance, created, **kwargs):
    if created:
        record_admin_entry(instance)


def delete_selected_audited(modeladmin, request, queryset):
    """Django's "Delete selected …" (every admin list's action), with an
    event per object deleted: Django logs a deletion of several objects
    with one bulk INSERT of LogEntry rows, which sends no post_save (one
    object's row is saved, and on_admin_log_entry records it)."""
    several = request.POST.get("post") == "yes" and queryset.count() > 1
    last = LogEntry.objects.order_by("-pk").values_list("pk", flat=True).first() or 0 if several else 0
    response = delete_selected(modeladmin, request, queryset)
    if several and response is None:  # deleted (a refusal answers a page)
        entries = LogEntry.objects.filter(pk__gt=last, action_flag=DELETION, user_id=request.user.pk)
        for entry in entries.order_by("pk"):
            record_admin_entry(entry)
    return response


delete_selected_audited.allowed_permissions = delete_selected.allowed_permissions
delete_selected_audited.short_description = delete_selected.short_description


def record_admin_entry(entry):
    """One audit event for an admin LogEntry (add, change or delete)."""
    verb = _VERBS.get(entry.action_flag, "changed")
    what = f"{entry.content_type.app_label}.{entry.content_type.model}" if entry.content_type_id else "?"
    user = entry.user.get_username() if entry.user_id else ""
    audit.record(
        Action.SETTINGS,
        actor=user,
        actor_kind="user",
        description=f"{verb} {what} {entry.object_repr}",
        details={
            "object": what,
            "object_id": entry.object_id or "",
            "object_repr": entry.object_repr,
            "action": verb,
            "change": entry.get_change_message(),
        },
    )


# --- burns -----------------------------------------------------------------------------------


def on_burn_job_saved(sender, instance, created, update_fields=None, **kwargs):
    """publishing.tasks.submit saves `files_written` and `robot_status`
    once the job files are in the robot's folder: that save is the burn."""
    job = instance
    if not update_fields or "files_written" not in update_fields or job.robot_status != "submitted":
        return
    if job.state not in (JobState.SUBMITTED, JobState.BURNING):
        return
    studies = list(job.studies.values_list("study_instance_uid", "patient_id")[:50])
    if not studies:
        studies = list(
            job.instances.values_list("series__study__study_instance_uid", "series__study__patient_id").distinct()[:50]
        )
    patients = sorted({pid for _, pid in studies})
    audit.record(
        Action.BURN,
        actor=f"burn job {job.pk}",
        actor_kind="system",
        patient_id=patients[0] if len(patients) == 1 else "",
        study_uid=studies[0][0] if len(studies) == 1 else "",
        description=f"burn job {job.pk} submitted to {job.publisher or '?'}: {len(job.files_written)} disc(s)",
        details={
            "job": job.pk,
            "publisher": str(job.publisher or ""),
            "trigger": job.trigger,
            "discs": len(job.files_written),
            "studies": [uid for uid, _ in studies],
            "patients": patients,
        },
    )


# --- transfers -------------------------------------------------------------------------------


SWEEP = datetime.timedelta(days=1)  # how far back a sweep looks for ended jobs


def on_task_done(sender, task=None, **kwargs):
    """After each run of the transfer task in a django-q2 worker."""
    if not task or task.get("func") != TRANSFER_TASK:
        return
    try:
        transfers_ended()
    except Exception:
        logger.exception("audit events of ended transfer jobs could not be written")


def transfers_ended(*, since=None):
    """Record each transfer job that ended (since a day) and has no event
    yet; returns how many were recorded.  Jobs may end in any process (a
    worker's child, runscp's retry timer, `manage.py dicom`); the sweep runs
    after every run of the transfer task, and an AuditMark per job is the
    claim: a second worker sweeping at the same time gets an IntegrityError
    and leaves the job to the first."""
    since = since or timezone.now() - SWEEP
    marked = AuditMark.objects.filter(key__startswith="transfer:").values_list("key", flat=True)
    jobs = (
        TransferJob.objects.filter(state__in=FINISHED_STATES, finished_at__gte=since)
        .exclude(pk__in=[int(key.partition(":")[2]) for key in marked.filter(at__gte=since - SWEEP)])
        .select_related("peer", "requested_by")
    )
    count = 0
    for job in jobs:
        try:
            with transaction.atomic():
                AuditMark.objects.create(key=f"transfer:{job.pk}")
        except IntegrityError:
            continue  # another worker process recorded it
        _record_transfer(job)
        count += 1
    return count


def _record_transfer(job):
    sending = job.kind == TransferKind.SEND
    study_uid = job.study_uid or (job.uids[0] if job.level == "STUDY" and job.uids else "")
    outcome = {
        TransferState.SUCCEEDED: AuditOutcome.SUCCESS,
        TransferState.PARTLY_FAILED: AuditOutcome.MINOR_FAILURE,
        TransferState.CANCELLED: AuditOutcome.MINOR_FAILURE,
    }.get(job.state, AuditOutcome.SERIOUS_FAILURE)
    patient = Study.objects.filter(study_instance_uid=study_uid).values_list("patient_id", flat=True).first()
    audit.record(
        Action.SEND if sending else Action.IMPORT,
        actor=job.requested_by.get_username() if job.requested_by else "system",
        actor_kind="user" if job.requested_by else "system",
        address=job.peer.host,
        outcome=outcome,
        patient_id=patient or "",
        study_uid=study_uid,
        description=f"transfer job {job.pk} {job.get_kind_display()} {job.peer.ae_title}: "
        f"{job.get_state_display()}, {job.done} done, {job.failed} failed",
        details={
            "job": job.pk,
            "kind": job.kind,
            "peer": job.peer.ae_title,
            "level": job.level,
            "uids": list(job.uids)[:50],
            "state": job.state,
            "done": job.done,
            "failed": job.failed,
        },
    )


# --- retention -------------------------------------------------------------------------------


def prune_audit_events(row):
    """The daily pruner (pacs_site/retention.py): events older than the
    audit settings' retention days."""
    AuditMark.objects.filter(at__lt=timezone.now() - 2 * SWEEP).delete()  # older than any sweep looks
    days = AuditSettings.load().retention_days
    if not days:
        return "kept"
    cutoff = timezone.now() - datetime.timedelta(days=days)
    deleted, _ = AuditEvent.objects.filter(at__lt=cutoff).delete()
    return f"{deleted} audit events deleted"
