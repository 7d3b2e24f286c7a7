"""Admin: DICOM server settings (singleton), peers, a read-only archive
browser and the association log."""

from urllib.parse import urlsplit

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme

from dicomnodes.lifecycle.corrections_admin import CorrectionAdminMixin
from dicomnodes.lifecycle.deletion_admin import DeletionAdminMixin
from dicomnodes.models import (
    AssociationLog,
    DicomServerSettings,
    Instance,
    Patient,
    Peer,
    Series,
    Study,
    TransferLevel,
)
from dicomnodes.transfers.admin import TransferJobAdmin, send_to_action  # noqa: F401 (registers the job admin)
from dicomnodes.transfers.echo import echo, echo_many
from pacs_site.singleton import SingletonAdmin


@admin.register(DicomServerSettings)
class DicomServerSettingsAdmin(SingletonAdmin):
    fieldsets = [
        (None, {"fields": ["ae_title", "port"]}),
        (
            "Behaviour",
            {"fields": ["duplicate_policy", "unknown_ae_may_echo_and_store", "trust_any_sender", "fsync_on_store"]},
        ),
        ("Query", {"fields": ["case_insensitive_names", "find_result_limit"]}),
        ("Network", {"fields": ["service_timeout", "debug"]}),
        (
            "DICOM over TLS",
            {"fields": ["tls_port", "tls_certificate_file", "tls_key_file", "tls_client_ca_file"]},
        ),
        (
            "Limits",
            {"fields": ["max_associations", "max_associations_per_address", "max_inflated_mb", "max_decoded_mb"]},
        ),
        ("Outgoing transfers", {"fields": ["max_outgoing_connections", "retry_delays", "open_transferred_studies"]}),
    ]


@admin.register(Peer)
class PeerAdmin(admin.ModelAdmin):
    """Known DICOM nodes, with an Echo button per row and an "Echo selected"
    action; echoing needs the same permission as editing (change_peer)."""

    list_display = [
        "name",
        "ae_title",
        "host",
        "port",
        "may_store",
        "may_query",
        "may_retrieve",
        "is_move_destination",
        "echo_button",
    ]
    list_filter = ["may_store", "may_query", "may_retrieve", "is_move_destination"]
    search_fields = ["name", "ae_title", "host"]
    actions = ["echo_selected"]

    def get_urls(self):
        echo_url = path(
            "<path:object_id>/echo/",
            self.admin_site.admin_view(self.echo_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_echo",
        )
        # Before the admin's own patterns: "<path:object_id>/" would swallow it.
        return [echo_url, *super().get_urls()]

    def get_list_display(self, request):
        if self.has_change_permission(request):
            return self.list_display
        return [name for name in self.list_display if name != "echo_button"]

    @admin.display(description="echo")
    def echo_button(self, obj):
        # The rows sit inside the changelist's own POST form (which carries the
        # CSRF token); a form in a form is invalid HTML, so the button borrows
        # that form and only changes where it is sent.
        url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_echo", args=[obj.pk])
        return format_html(
            '<button type="submit" class="button" formaction="{}" formmethod="post" formnovalidate>Echo</button>', url
        )

    def echo_view(self, request, object_id):
        """POST <id>/echo/: echo one peer, report it, back to the list."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        peer = self.get_object(request, unquote(object_id))
        if not self.has_change_permission(request, peer):
            raise PermissionDenied
        if peer is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        self._report_echo(request, peer, echo(peer))
        return redirect(self._changelist_url(request))

    @admin.action(description="Echo selected peers", permissions=["change"])
    def echo_selected(self, request, queryset):
        for peer, result in echo_many(queryset):
            self._report_echo(request, peer, result)

    def _report_echo(self, request, peer, result):
        text = f"{peer.name} ({peer.ae_title}@{peer.host}:{peer.port}): {result.message}"
        if result.ok:
            messages.success(request, text)
        else:
            messages.error(request, text)

    def _changelist_url(self, request):
        """Back to the list the button was pressed in (its filters and page)."""
        changelist = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
        referer = request.headers.get("referer", "")
        safe = url_has_allowed_host_and_scheme(referer, {request.get_host()}, require_https=request.is_secure())
        return referer if safe and urlsplit(referer).path == changelist else changelist


class ReadOnlyAdmin(admin.ModelAdmin):
    """The archive is written by runscp and reindex only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Django's own delete would drop index rows and orphan their files:
        # deletion goes through the "Delete selected … with their files"
        # action (dicomnodes/lifecycle/deletion_admin.py), rows and files.
        return False


def _link(obj, label=None):
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


# The image viewer another app serves (portal's OHIF): a function giving the
# viewer's address of a Study or a Series.  None: no "Open in viewer" links.
_viewer = {"url": None}


def register_viewer(url_for):
    """Show "Open in viewer" on studies and series (lists and pages), to
    `url_for(study_or_series)` (called by the viewer app's admin module)."""
    _viewer["url"] = url_for


@admin.display(description="viewer")
def viewer_link(obj):
    url_for = _viewer["url"]
    if url_for is None or obj is None or obj.pk is None:
        return "-"
    return format_html('<a class="viewer-link" href="{}" target="_blank">Open in viewer</a>', url_for(obj))


def _children_link(model, field, pk, count, noun):
    url = reverse(f"admin:dicomnodes_{model}_changelist") + f"?{field}={pk}"
    return format_html('<a href="{}">{} {}</a>', url, count, noun)


@admin.register(Patient)
class PatientAdmin(CorrectionAdminMixin, DeletionAdminMixin, ReadOnlyAdmin):
    list_display = [
        "patient_name",
        "patient_id",
        "issuer_of_patient_id",
        "patient_birth_date",
        "patient_sex",
        "studies",
    ]
    search_fields = ["patient_name_upper", "patient_id"]
    list_filter = ["protected"]  # from recycling and retention rules (lifecycle/admin.py)
    list_per_page = 50

    @admin.display(description="studies")
    def studies(self, obj):
        return _children_link("study", "patient_record__id__exact", obj.pk, obj.num_studies, "studies")

    def get_search_results(self, request, queryset, search_term):
        return super().get_search_results(request, queryset, search_term.upper() if search_term else search_term)

    def get_actions(self, request):
        """Ours, then those other apps registered (`register_patient_action`)."""
        return _with_registered(self, request, super().get_actions(request), _patient_actions)


@admin.register(Study)
class StudyAdmin(CorrectionAdminMixin, DeletionAdminMixin, ReadOnlyAdmin):
    list_display = [
        "study_date",
        "study_time",
        "patient_name",
        "patient_id",
        "accession_number",
        "study_description",
        "modalities_in_study",
        "series_link",
        "num_instances",
        viewer_link,
    ]
    list_filter = ["study_date", "modalities_in_study", "protected"]
    search_fields = ["patient_name_upper", "patient_id", "accession_number", "study_instance_uid", "study_description"]
    date_hierarchy = None
    list_per_page = 50
    readonly_fields = ["patient_link", viewer_link]
    actions = [send_to_action(TransferLevel.STUDY)]

    def get_actions(self, request):
        """Ours, then those other apps registered (`register_study_action`)."""
        return _with_registered(self, request, super().get_actions(request), _study_actions)

    @admin.display(description="series")
    def series_link(self, obj):
        return _children_link("series", "study__id__exact", obj.pk, obj.num_series, "series")

    @admin.display(description="patient")
    def patient_link(self, obj):
        return _link(obj.patient_record)

    def get_search_results(self, request, queryset, search_term):
        # Names are matched on the upper-cased column; a date searches study dates.
        base = queryset
        queryset, dup = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            queryset |= base.filter(patient_name_upper__contains=term.upper())
            digits = term.replace("-", "")
            if digits.isdigit() and len(digits) == 8:
                queryset |= base.filter(study_date=digits)
        return queryset, dup


# Study list actions of other apps: (action function, permission that shows it).
_study_actions = []


def register_study_action(action, *, permission):
    """Add an admin action to the study list (called by other apps' admin
    modules, e.g. "Burn to CD/DVD…", "Create patient link"); shown to users
    with `permission` ("app_label.codename")."""
    if any(existing is action for existing, _ in _study_actions):
        raise ValueError(f"study action {action.__name__} is registered twice")
    _study_actions.append((action, permission))


# Patient list actions of other modules (protect / unprotect: lifecycle/admin.py).
_patient_actions = []


def register_patient_action(action, *, permission):
    """As `register_study_action`, for the patient list."""
    if any(existing is action for existing, _ in _patient_actions):
        raise ValueError(f"patient action {action.__name__} is registered twice")
    _patient_actions.append((action, permission))


def _with_registered(modeladmin, request, actions, registered):
    """`actions` plus the registered ones the user has the permission for."""
    if actions is None or modeladmin.actions is None:
        return actions
    for action, permission in registered:
        if request.user.has_perm(permission):
            actions[action.__name__] = (
                action,
                action.__name__,
                modeladmin._get_action_description(action, action.__name__),
            )
    return actions


@admin.register(Series)
class SeriesAdmin(DeletionAdminMixin, ReadOnlyAdmin):
    list_display = [
        "series_number",
        "modality",
        "series_description",
        "study_link",
        "instances_link",
        "series_date",
        viewer_link,
    ]
    readonly_fields = [viewer_link]
    list_filter = ["modality"]
    search_fields = ["series_instance_uid", "series_description"]
    list_per_page = 50
    actions = [send_to_action(TransferLevel.SERIES)]

    @admin.display(description="study")
    def study_link(self, obj):
        return _link(obj.study)

    @admin.display(description="instances")
    def instances_link(self, obj):
        return _children_link("instance", "series__id__exact", obj.pk, obj.num_instances, "instances")


@admin.register(Instance)
class InstanceAdmin(DeletionAdminMixin, ReadOnlyAdmin):
    list_display = [
        "instance_number",
        "sop_instance_uid",
        "sop_class_uid",
        "transfer_syntax_uid",
        "file_size",
        "called_ae",
        "calling_ae",
        "received_at",
    ]
    list_filter = ["called_ae", "transfer_syntax_uid"]
    search_fields = ["sop_instance_uid"]
    list_per_page = 100
    list_select_related = ["series"]


@admin.register(AssociationLog)
class AssociationLogAdmin(ReadOnlyAdmin):
    list_display = [
        "started_at",
        "calling_ae",
        "peer_address",
        "called_ae",
        "result",
        "reason",
        "instances_received",
        "instances_failed",
        "bytes_received",
        "duration",
    ]
    list_filter = ["result", "called_ae"]
    search_fields = ["calling_ae", "peer_address", "called_ae"]
    list_per_page = 100

