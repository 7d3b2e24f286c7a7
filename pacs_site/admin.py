"""Retention settings, and the quarantine folder (its files listed,
downloaded and deleted) on pages of their own beside them."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from dicomnodes.archive import quarantine
from pacs_site.models import RetentionSettings
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
