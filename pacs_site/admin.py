"""Retention settings, and the quarantine folder (its files listed,
downloaded and deleted) on pages of their own beside them; the audit
settings and the audit trail (read-only, filtered, exported as CSV)."""

import csv
import json

from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponseBadRequest, HttpResponseNotAllowed, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from dicomnodes.archive import quarantine
from pacs_site import syslog
from pacs_site.models import AuditEvent, AuditSettings, RetentionSettings
from pacs_site.singleton import SingletonAdmin

# Quarantined bytes are patient data as stored instances are: the same permissions.
MAY_SEE_QUARANTINE = "dicomnodes.view_instance"
MAY_DELETE_QUARANTINE = "dicomnodes.delete_instance"


@admin.register(RetentionSettings)
class RetentionSettingsAdmin(SingletonAdmin):
    fieldsets = [
        ("Quarantine", {"fields": ["quarantine_now", "quarantine_days", "quarantine_max_mb"]}),
        ("Preview cache", {"fields": ["preview_days", "preview_max_mb"]}),
        ("HL7", {"fields": ["hl7_message_days"]}),
        ("Logs", {"fields": ["association_log_days", "association_log_max_rows", "event_days"]}),
    ]
    readonly_fields = ["quarantine_now"]

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("quarantine/", view(self.quarantine_view), name="pacs_site_quarantine"),
            path("quarantine/<str:name>/download/", view(self.download_view), name="pacs_site_quarantine_download"),
            path("quarantine/<str:name>/delete/", view(self.delete_view_of_file), name="pacs_site_quarantine_delete"),
            *super().get_urls(),
        ]

    @admin.display(description="now")
    def quarantine_now(self, obj):
        files = quarantine.listing()
        return format_html(
            '{} files, {} — <a href="{}">open the quarantine</a>',
            len(files),
            filesizeformat(sum(f.size for f in files)),
            reverse("admin:pacs_site_quarantine"),
        )

    def quarantine_view(self, request):
        """The quarantined files: count, total size, a download link and a
        delete button for each."""
        if not request.user.has_perm(MAY_SEE_QUARANTINE):
            raise PermissionDenied
        files = quarantine.listing()
        context = {
            **self.admin_site.each_context(request),
            "title": "Quarantine",
            "opts": self.opts,
            "files": files,
            "total": sum(f.size for f in files),
            "may_delete": request.user.has_perm(MAY_DELETE_QUARANTINE),
        }
        return TemplateResponse(request, "admin/pacs_site/quarantine.html", context)

    def download_view(self, request, name):
        if not request.user.has_perm(MAY_SEE_QUARANTINE):
            raise PermissionDenied
        found = quarantine.path_of(name)  # None unless `name` is <32 hex>.dcm and exists
        if found is None:
            raise Http404("no such quarantined file")
        return FileResponse(open(found, "rb"), as_attachment=True, filename=name, content_type="application/dicom")

    def delete_view_of_file(self, request, name):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm(MAY_DELETE_QUARANTINE):
            raise PermissionDenied
        if quarantine.delete(name):
            messages.success(request, f"{name} deleted from the quarantine.")
        else:
            messages.warning(request, "No such quarantined file.")
        return redirect("admin:pacs_site_quarantine")


# --- The audit trail ---------------------------------------------------------------------------

EXPORT_MAX_ROWS = 200_000  # one CSV export at most (a year of a busy site's queries is more: filter first)
EXPORT_COLUMNS = [
    ("at", lambda e: e.at.isoformat()),
    ("action", lambda e: e.action),
    ("outcome", lambda e: e.outcome),
    ("actor", lambda e: e.actor),
    ("actor kind", lambda e: e.actor_kind),
    ("address", lambda e: e.address),
    ("patient ID", lambda e: e.patient_id),
    ("study instance UID", lambda e: e.study_instance_uid),
    ("description", lambda e: e.description),
    ("details", lambda e: json.dumps(e.details, ensure_ascii=False, sort_keys=True)),
]


@admin.register(AuditSettings)
class AuditSettingsAdmin(SingletonAdmin):
    fieldsets = [
        ("Recorded", {"fields": ["query_patient_keys", "retention_days"]}),
        (
            "Syslog forwarding",
            {
                "fields": [
                    "syslog_enabled",
                    "syslog_host",
                    "syslog_port",
                    "syslog_transport",
                    "syslog_ca_file",
                    "syslog_now",
                ]
            },
        ),
    ]
    readonly_fields = ["syslog_now"]

    @admin.display(description="this process")
    def syslog_now(self, obj):
        return syslog.status_text()


class _Echo:
    """A file for csv.writer whose write returns the line (streamed, never held)."""

    def write(self, value):
        return value


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: events are written by the code they audit, never by hand."""

    list_display = ["at", "action", "outcome", "actor", "address", "patient_id", "study_instance_uid", "description"]
    list_filter = ["action", "actor_kind", "outcome", "at"]
    search_fields = ["=patient_id", "actor", "=study_instance_uid", "address"]
    date_hierarchy = "at"
    list_per_page = 100
    show_full_result_count = False  # a count of millions of rows on every page is slow
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view
        return [path("export.csv", view(self.export_view), name="pacs_site_auditevent_export"), *super().get_urls()]

    def export_view(self, request):
        """The changelist's events (its filters, search and period) as CSV,
        streamed, at most EXPORT_MAX_ROWS, newest first."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        try:
            rows = self.get_changelist_instance(request).get_queryset(request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest("bad filter")
        rows = rows.order_by("-at", "-id")[:EXPORT_MAX_ROWS]
        writer = csv.writer(_Echo())

        def lines():
            yield writer.writerow([name for name, _ in EXPORT_COLUMNS])
            for row in rows.iterator(chunk_size=2000):
                yield writer.writerow([value(row) for _, value in EXPORT_COLUMNS])

        response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="audit-{timezone.now():%Y%m%d-%H%M%S}.csv"'
        return response
