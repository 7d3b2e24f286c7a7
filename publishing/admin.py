"""Admin: publishing settings, publishers, burn jobs (countdown, cancel,
resubmit) and the studies' "Burn to CD/DVD…" action."""

from django.contrib import admin, messages
from django.db import transaction
from django.template.response import TemplateResponse

from dicomnodes.admin import register_study_action
from dicomnodes.models import Instance
from pacs_site.singleton import SingletonAdmin
from publishing import tasks
from publishing.labels import person_name
from publishing.models import BurnJob, Disc, Publisher, PublishingSettings, Trigger
from publishing.triggers import immediate_job

BURN_PERMISSION = "publishing.add_burnjob"


@admin.register(PublishingSettings)
class PublishingSettingsAdmin(SingletonAdmin):
    fieldsets = [
        ("Delayed burning (_TE, _TP)", {"fields": ["delay_seconds", "grouping"]}),
        ("Disc content", {"fields": ["staging_folder", "viewer_folder", "keep_staging"]}),
    ]


@admin.register(Publisher)
class PublisherAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "is_default", "enabled", "disc_type", "copies", "job_folder"]
    list_filter = ["kind", "enabled"]
    fieldsets = [
        (None, {"fields": ["name", "kind", "is_default", "enabled"]}),
        ("Robot", {"fields": ["job_folder", "status_location", "robot_staging_folder", "robot_name", "encoding"]}),
        ("Discs", {"fields": ["disc_type", "copies", "cd_capacity", "dvd_capacity"]}),
        ("Label", {"fields": ["label_template", "merge_fields"]}),
    ]


class DiscInline(admin.TabularInline):
    model = Disc
    extra = 0
    can_delete = False
    fields = ["number", "media", "robot_job_id", "state", "robot_status", "good_discs", "bad_discs", "size", "folder"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(BurnJob)
class BurnJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "state",
        "countdown",
        "kind",
        "publisher",
        "trigger",
        "patients",
        "instance_count",
        "good_discs",
        "bad_discs",
        "robot_status_short",
        "updated_at",
    ]
    list_filter = ["state", "kind", "trigger"]
    search_fields = ["group_key", "robot_job_id"]
    actions = ["cancel_jobs", "resubmit_jobs"]
    inlines = [DiscInline]
    fields = [
        "kind",
        "publisher",
        "trigger",
        "group_key",
        "state",
        "due_at",
        "countdown",
        "message",
        "robot_job_id",
        "robot_status",
        "good_discs",
        "bad_discs",
        "files_written",
        "attempts",
        "created_at",
        "submitted_at",
        "finished_at",
    ]
    readonly_fields = fields

    def has_add_permission(self, request):
        return False  # jobs come from the modalities and from "Burn to CD/DVD…" on studies

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("publisher")

    @admin.display(description="due")
    def countdown(self, obj):
        return tasks.countdown(obj) or "-"

    @admin.display(description="patients")
    def patients(self, obj):
        rows = obj.studies.values_list("patient_name", "patient_id").distinct()
        return ", ".join(f"{person_name(name)} [{pid}]" for name, pid in rows) or "-"

    @admin.display(description="instances")
    def instance_count(self, obj):
        return obj.instances.count()

    @admin.display(description="robot status")
    def robot_status_short(self, obj):
        return obj.robot_status[:80]

    @admin.action(description="Cancel selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset):
        for job in queryset:
            self.message_user(request, f"Job {job.pk}: {tasks.cancel(job)}")

    @admin.action(description="Resubmit selected jobs", permissions=["change"])
    def resubmit_jobs(self, request, queryset):
        for job in queryset:
            self.message_user(request, f"Job {job.pk}: {tasks.resubmit(job)}")


# --- On studies ----------------------------------------------------------------------------------


@admin.action(description="Burn to CD/DVD…")
def burn_to_disc(modeladmin, request, queryset):
    """Ask for the publisher, then one job per patient with every instance of
    the selected studies."""
    publishers = list(Publisher.objects.filter(enabled=True).order_by("-is_default", "name"))
    if "apply" in request.POST and publishers:
        publisher = next((p for p in publishers if str(p.pk) == request.POST.get("publisher")), None)
        if publisher is None:
            messages.error(request, "Choose an enabled publisher.")
            return None
        by_patient = {}
        for study in queryset:
            by_patient.setdefault(study.patient_id or f"study {study.pk}", []).append(study)
        for studies in by_patient.values():
            instances = list(Instance.objects.filter(series__study__in=studies).select_related("series__study"))
            if not instances:
                messages.warning(request, "A selected study has no instances; nothing to burn.")
                continue
            with transaction.atomic():
                job = immediate_job(publisher.kind, instances, trigger=Trigger.MANUAL, publisher=publisher)
            messages.success(request, f"Burn job {job.pk} queued for {publisher} ({len(instances)} instances).")
        return None
    return TemplateResponse(
        request,
        "admin/publishing/burn_to_disc.html",
        {
            **modeladmin.admin_site.each_context(request),
            "title": "Burn to CD/DVD",
            "studies": list(queryset),
            "publishers": publishers,
            "opts": modeladmin.model._meta,
        },
    )


# The archive admin is read-only; burning needs the permission to add burn jobs.
register_study_action(burn_to_disc, permission=BURN_PERMISSION)
