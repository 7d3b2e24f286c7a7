"""Admin: DICOM server settings (singleton), peers, a read-only archive
browser and the association log."""

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from dicomnodes.models import AssociationLog, DicomServerSettings, Instance, Patient, Peer, Series, Study
from pacs_site.singleton import SingletonAdmin


@admin.register(DicomServerSettings)
class DicomServerSettingsAdmin(SingletonAdmin):
    fieldsets = [
        (None, {"fields": ["ae_title", "port"]}),
        ("Behaviour", {"fields": ["duplicate_policy", "unknown_ae_may_echo_and_store", "fsync_on_store"]}),
        ("Query", {"fields": ["case_insensitive_names", "find_result_limit"]}),
        ("Network", {"fields": ["service_timeout", "debug"]}),
    ]


@admin.register(Peer)
class PeerAdmin(admin.ModelAdmin):
    list_display = ["name", "ae_title", "host", "port", "may_store", "may_query", "may_retrieve", "is_move_destination"]
    list_filter = ["may_store", "may_query", "may_retrieve", "is_move_destination"]
    search_fields = ["name", "ae_title", "host"]


class ReadOnlyAdmin(admin.ModelAdmin):
    """The archive is written by runscp and reindex only."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleting index rows would orphan their files; deletion with the
        # files comes with its own issue.
        return False


def _link(obj, label=None):
    if obj is None:
        return "-"
    url = reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, label or str(obj))


def _children_link(model, field, pk, count, noun):
    url = reverse(f"admin:dicomnodes_{model}_changelist") + f"?{field}={pk}"
    return format_html('<a href="{}">{} {}</a>', url, count, noun)


@admin.register(Patient)
class PatientAdmin(ReadOnlyAdmin):
    list_display = [
        "patient_name",
        "patient_id",
        "issuer_of_patient_id",
        "patient_birth_date",
        "patient_sex",
        "studies",
    ]
    search_fields = ["patient_name_upper", "patient_id"]
    list_per_page = 50

    @admin.display(description="studies")
    def studies(self, obj):
        return _children_link("study", "patient_record__id__exact", obj.pk, obj.num_studies, "studies")

    def get_search_results(self, request, queryset, search_term):
        return super().get_search_results(request, queryset, search_term.upper() if search_term else search_term)


@admin.register(Study)
class StudyAdmin(ReadOnlyAdmin):
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
    ]
    list_filter = ["study_date", "modalities_in_study"]
    search_fields = ["patient_name_upper", "patient_id", "accession_number", "study_instance_uid", "study_description"]
    date_hierarchy = None
    list_per_page = 50
    readonly_fields = ["patient_link"]

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


@admin.register(Series)
class SeriesAdmin(ReadOnlyAdmin):
    list_display = ["series_number", "modality", "series_description", "study_link", "instances_link", "series_date"]
    list_filter = ["modality"]
    search_fields = ["series_instance_uid", "series_description"]
    list_per_page = 50

    @admin.display(description="study")
    def study_link(self, obj):
        return _link(obj.study)

    @admin.display(description="instances")
    def instances_link(self, obj):
        return _children_link("instance", "series__id__exact", obj.pk, obj.num_instances, "instances")


@admin.register(Instance)
class InstanceAdmin(ReadOnlyAdmin):
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
