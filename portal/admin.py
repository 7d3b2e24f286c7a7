"""Admin: HTTP server settings (one row), study tokens, and the "Create
patient link" actions on the study list.

The clear token is shown once, on the page the action answers with (the
link and its QR code); afterwards only its hash exists.
"""

import qrcode
import qrcode.image.svg
from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.safestring import mark_safe

from dicomnodes.admin import register_study_action, register_viewer
from pacs_site.singleton import SingletonAdmin
from pacs_site.tls import certificate_expiry
from portal.models import HttpSettings, StudyToken, TokenScope, detected_public_ip
from portal.tokens import create_token
from portal.viewer.config import url_of as viewer_url_of


@admin.register(HttpSettings)
class HttpSettingsAdmin(SingletonAdmin):
    fieldsets = [
        ("Shown on every page", {"fields": ["institution", "department"]}),
        ("Web server", {"fields": ["web_port", "web_server_name", "detected_ip", "public_ip", "link_example"]}),
        ("TLS", {"fields": ["tls_enabled", "tls_certificate_file", "tls_key_file", "certificate_valid_until"]}),
        ("Patient links", {"fields": ["study_accessibility", "preview_max_megapixels"]}),
    ]
    readonly_fields = ["detected_ip", "link_example", "certificate_valid_until"]

    @admin.display(description="detected public IP")
    def detected_ip(self, obj):
        return detected_public_ip()

    @admin.display(description="links look like")
    def link_example(self, obj):
        return f"{obj.base_url()}/token?…"

    @admin.display(description="certificate valid until")
    def certificate_valid_until(self, obj):
        if not obj.tls_certificate_file:
            return "-"
        end = certificate_expiry(obj.tls_certificate_file)
        return f"{end:%Y-%m-%d %H:%M} UTC" if end else "cannot read the certificate"


@admin.register(StudyToken)
class StudyTokenAdmin(admin.ModelAdmin):
    """Tokens are made from the study list; here they are watched and revoked."""

    list_display = ["short_hash", "study", "scope", "created_at", "created_by", "expires_at", "state", "use_count"]
    list_display_links = ["short_hash"]
    list_filter = ["scope", ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["study__patient_name_upper", "study__patient_id", "study__accession_number"]
    list_select_related = ["study", "created_by"]
    actions = ["revoke_selected"]
    readonly_fields = [
        "short_hash",
        "study",
        "scope",
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "use_count",
        "last_used_at",
    ]
    fields = readonly_fields

    def has_add_permission(self, request):
        return False  # "Create patient link" on the study list makes them

    @admin.display(description="token (hash)")
    def short_hash(self, obj):
        return f"{obj.token_hash[:12]}…"

    @admin.display(description="state")
    def state(self, obj):
        if obj.is_revoked():
            return "revoked"
        return "expired" if obj.is_expired() else "usable"

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_selected(self, request, queryset):
        count = queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
        messages.success(request, f"{count} token(s) revoked.")


def _qr_svg(url: str) -> str:
    image = qrcode.make(url, image_factory=qrcode.image.svg.SvgPathImage, box_size=8, border=2)
    return image.to_string(encoding="unicode")


def _create_links(modeladmin, request, queryset, scope):
    made = []
    for study in queryset.select_related("patient_record"):
        new = create_token(study, scope=scope, created_by=request.user)
        made.append({"study": study, "token": new.row, "url": new.url, "qr": mark_safe(_qr_svg(new.url))})
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": "Patient links",
        "opts": modeladmin.model._meta,
        "links": made,
    }
    return TemplateResponse(request, "admin/portal/patient_links.html", context)


@admin.action(description="Create patient link")
def create_patient_link(modeladmin, request, queryset):
    return _create_links(modeladmin, request, queryset, TokenScope.STUDY)


@admin.action(description="Create patient link (all studies of the patient)")
def create_patient_link_all_studies(modeladmin, request, queryset):
    return _create_links(modeladmin, request, queryset, TokenScope.PATIENT)


# The study list is read-only (no change permission): whoever may add study
# tokens may create patient links.
register_study_action(create_patient_link, permission="portal.add_studytoken")
register_study_action(create_patient_link_all_studies, permission="portal.add_studytoken")

# "Open in viewer" on studies and series: the OHIF viewer under /viewer/.
register_viewer(viewer_url_of)
