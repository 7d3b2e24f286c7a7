"""Admin: the archive settings (disk guard, recycling) with the free space
now, the retention rules with a dry-run preview, and protect / unprotect
actions for patients and studies.  Imported by dicomnodes/admin.py, last."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from dicomnodes.admin import register_patient_action, register_study_action
from dicomnodes.lifecycle import diskguard, rules
from dicomnodes.models import ArchiveSettings, Patient, RetentionRule, Study
from pacs_site.audit import Action, record
from pacs_site.singleton import SingletonAdmin

# Who may run a rule now from its preview page: who may edit rules and delete studies.
RUN_PERMISSIONS = ("dicomnodes.change_retentionrule", "dicomnodes.delete_study")
# Who may protect and unprotect.
PROTECT_PERMISSION = {Study: "dicomnodes.change_study", Patient: "dicomnodes.change_patient"}


@admin.register(ArchiveSettings)
class ArchiveSettingsAdmin(SingletonAdmin):
    fieldsets = [
        ("Disk guard", {"fields": ["free_space", "min_free_mb", "min_free_percent"]}),
        ("Recycling", {"fields": ["max_storage_mb", "max_patients"]}),
    ]
    readonly_fields = ["free_space"]

    @admin.display(description="free space now")
    def free_space(self, obj):
        try:
            status = diskguard.measure()
        except OSError as exc:
            return f"cannot measure the storage volume: {exc.strerror or exc}"
        return f"{status.summary()} (storage volume of {status.path})"


@admin.register(RetentionRule)
class RetentionRuleAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "enabled",
        "older_than_days",
        "modality",
        "calling_ae",
        "last_run_at",
        "last_deleted",
        "preview_link",
    ]
    list_filter = ["enabled"]
    fields = ["name", "enabled", "older_than_days", "modality", "calling_ae", "notes", "last_run_at", "last_deleted"]
    readonly_fields = ["last_run_at", "last_deleted"]

    def get_urls(self):
        preview = path(
            "<int:rule_id>/preview/",
            self.admin_site.admin_view(self.preview_view),
            name="dicomnodes_retentionrule_preview",
        )
        return [preview, *super().get_urls()]

    @admin.display(description="dry run")
    def preview_link(self, obj):
        return format_html('<a href="{}">Preview</a>', reverse("admin:dicomnodes_retentionrule_preview", args=[obj.pk]))

    def preview_view(self, request, rule_id):
        """GET: the studies the rule deletes now (and those it leaves, held).
        POST: run it now (the same list, computed again)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        rule = get_object_or_404(RetentionRule, pk=rule_id)
        may_run = request.user.has_perms(RUN_PERMISSIONS)
        if request.method == "POST":
            if not may_run:
                raise PermissionDenied
            done = rules.apply(rule)
            self.message_user(request, f"Rule {rule.name}: {len(done)} studies deleted.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:dicomnodes_retentionrule_changelist"))
        dry_run = rules.preview(rule)
        return TemplateResponse(
            request,
            "admin/dicomnodes/retentionrule/preview.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Dry run of the retention rule {rule.name}",
                "opts": self.opts,
                "rule": rule,
                "preview": dry_run,
                "may_run": may_run,
            },
        )


# --- protect / unprotect ----------------------------------------------------------------------


def _set_protected(modeladmin, request, queryset, protected):
    model = queryset.model
    if not request.user.has_perm(PROTECT_PERMISSION[model]):
        raise PermissionDenied
    rows = list(queryset.exclude(protected=protected))
    model.objects.filter(pk__in=[row.pk for row in rows]).update(protected=protected)
    verb = "protected" if protected else "unprotected"
    for row in rows:
        record(
            Action.SETTINGS,
            actor=request.user.get_username(),
            actor_kind="user",
            address=request.META.get("REMOTE_ADDR", ""),
            patient_id=row.patient_id,
            study_uid=getattr(row, "study_instance_uid", ""),
            description=f"{model._meta.verbose_name} {verb} (recycling and retention rules)",
        )
    modeladmin.message_user(request, f"{len(rows)} {model._meta.verbose_name_plural} {verb}.", messages.SUCCESS)


@admin.action(description="Protect from recycling and retention rules")
def protect_selected(modeladmin, request, queryset):
    _set_protected(modeladmin, request, queryset, True)


@admin.action(description="Unprotect (recycling and retention rules may delete)")
def unprotect_selected(modeladmin, request, queryset):
    _set_protected(modeladmin, request, queryset, False)


for _action in (protect_selected, unprotect_selected):
    register_study_action(_action, permission=PROTECT_PERMISSION[Study])
    register_patient_action(_action, permission=PROTECT_PERMISSION[Patient])
