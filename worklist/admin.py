"""Admin: worklist server settings (one row), worklist items (editable by
hand), the HL7 message log, the worklist query log and the outgoing status
updates (read-only), HL7 destinations."""

from django.contrib import admin, messages
from django.db import transaction
from django.utils import timezone
from django.utils.html import format_html
from pydicom.uid import generate_uid

from pacs_site.singleton import SingletonAdmin
from worklist.models import (
    DeliveryState,
    HL7Destination,
    HL7Message,
    OutgoingHL7Message,
    WorklistItem,
    WorklistQuery,
    WorklistSettings,
)
from worklist.orders import fit_charset
from worklist.outgoing import queue_delivery


@admin.register(WorklistSettings)
class WorklistSettingsAdmin(SingletonAdmin):
    fieldsets = [
        (None, {"fields": ["hl7_port", "default_charset"]}),
        ("Who may send", {"fields": ["allowed_senders"]}),
        ("Messages we send", {"fields": ["sending_application", "sending_facility", "send_acknowledgement"]}),
        ("Limits", {"fields": ["max_message_size", "idle_timeout", "frame_timeout", "max_connections"]}),
        ("Logging", {"fields": ["message_logging"]}),
    ]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None and not obj.allowed_senders.strip() and request.method == "GET":
            messages.warning(
                request,
                "Allowed senders is empty: anyone who can reach the HL7 port can create, change and "
                "cancel worklist items. List your RIS's address (and its MSH-3^MSH-4).",
            )
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)


@admin.register(WorklistItem)
class WorklistItemAdmin(admin.ModelAdmin):
    list_display = [
        "scheduled_start_date",
        "scheduled_start_time",
        "patient_name",
        "patient_id",
        "accession_number",
        "modality",
        "scheduled_station_ae_title",
        "scheduled_procedure_step_description",
        "status",
    ]
    list_filter = ["status", "modality", "scheduled_station_ae_title"]
    search_fields = ["patient_name_upper", "patient_id", "accession_number", "placer_order_number"]
    list_per_page = 50
    readonly_fields = ["specific_character_set", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["status"]}),
        (
            "Patient",
            {"fields": ["patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date", "patient_sex"]},
        ),
        (
            "Requested procedure",
            {
                "fields": [
                    "accession_number",
                    "requested_procedure_id",
                    "requested_procedure_description",
                    ("requested_procedure_code_value", "requested_procedure_code_scheme"),
                    "requested_procedure_code_meaning",
                    "requested_procedure_priority",
                    "requesting_physician",
                    "referring_physician_name",
                    "study_instance_uid",
                ]
            },
        ),
        (
            "Scheduled procedure step",
            {
                "fields": [
                    "scheduled_procedure_step_id",
                    "scheduled_procedure_step_description",
                    ("scheduled_protocol_code_value", "scheduled_protocol_code_scheme"),
                    "scheduled_protocol_code_meaning",
                    "modality",
                    "scheduled_station_ae_title",
                    ("scheduled_start_date", "scheduled_start_time"),
                    "scheduled_performing_physician_name",
                ]
            },
        ),
        (
            "Order",
            {
                "fields": [
                    "placer_order_number",
                    "filler_order_number",
                    "sending_application",
                    "sending_facility",
                    "specific_character_set",
                    ("created_at", "updated_at"),
                ]
            },
        ),
    ]

    def get_search_results(self, request, queryset, search_term):
        # Names are matched on the upper-cased column.
        return super().get_search_results(request, queryset, search_term.upper() if search_term else search_term)

    def save_model(self, request, obj, form, change):
        # An item typed in by hand still needs a study for the modality to use.
        if not obj.study_instance_uid:
            obj.study_instance_uid = generate_uid()
        obj.specific_character_set = fit_charset(obj, obj.specific_character_set, "ISO_IR 100")
        super().save_model(request, obj, form, change)


class _LogAdmin(admin.ModelAdmin):
    """Written by the listeners only; old rows may be deleted."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def _pre(text):
    return format_html('<pre style="white-space: pre-wrap">{}</pre>', text.replace("\r", "\n").strip())


@admin.register(HL7Message)
class HL7MessageAdmin(_LogAdmin):
    list_display = [
        "received_at",
        "peer",
        "sending_application",
        "message_type",
        "control_id",
        "outcome",
        "ack_code",
        "summary",
    ]
    list_filter = ["outcome", "message_type", "ack_code"]
    search_fields = ["control_id", "sending_application", "summary", "peer"]
    list_per_page = 100
    list_select_related = ["item"]
    fields = [
        ("received_at", "peer"),
        ("sending_application", "sending_facility"),
        ("message_type", "version", "charset", "control_id"),
        "message_text",
        "summary",
        ("outcome", "item"),
        "error",
        "ack_code",
        "ack_text",
    ]
    readonly_fields = ["message_text", "ack_text"]

    @admin.display(description="message")
    def message_text(self, obj):
        return _pre(obj.raw)

    @admin.display(description="ACK sent")
    def ack_text(self, obj):
        return _pre(obj.ack) if obj.ack else "-"


@admin.register(WorklistQuery)
class WorklistQueryAdmin(_LogAdmin):
    list_display = ["received_at", "calling_ae", "peer_address", "matches", "status"]
    list_filter = ["status", "calling_ae"]
    search_fields = ["calling_ae", "peer_address", "keys"]
    list_per_page = 100


@admin.register(HL7Destination)
class HL7DestinationAdmin(admin.ModelAdmin):
    list_display = ["name", "host", "port", "enabled"]
    list_filter = ["enabled"]
    search_fields = ["name", "host"]


@admin.register(OutgoingHL7Message)
class OutgoingHL7MessageAdmin(_LogAdmin):
    list_display = ["created_at", "destination", "item", "state", "attempts", "ack_code", "next_attempt_at"]
    list_filter = ["state", "ack_code", "destination"]
    search_fields = ["item__accession_number", "item__placer_order_number", "error"]
    list_select_related = ["destination", "item"]
    list_per_page = 100
    actions = ["resend"]
    fields = [
        ("created_at", "updated_at"),
        ("item", "destination"),
        ("state", "attempts", "next_attempt_at"),
        "message_text",
        "ack_code",
        "ack_text",
        "error",
    ]
    readonly_fields = ["message_text", "ack_text"]

    @admin.display(description="message")
    def message_text(self, obj):
        return _pre(obj.message)

    @admin.display(description="ACK received")
    def ack_text(self, obj):
        return _pre(obj.ack) if obj.ack else "-"

    def has_resend_permission(self, request):
        """The log is read-only; sending messages to the RIS again needs the
        change permission of outgoing messages."""
        return request.user.has_perm("worklist.change_outgoinghl7message")

    @admin.action(description="Send the selected messages again", permissions=["resend"])
    def resend(self, request, queryset):
        pks = list(queryset.values_list("pk", flat=True))
        queryset.update(
            state=DeliveryState.PENDING, attempts=0, next_attempt_at=None, error="", updated_at=timezone.now()
        )
        transaction.on_commit(lambda: queue_delivery(pks))
        self.message_user(request, f"{len(pks)} message(s) queued for sending.", messages.SUCCESS)
