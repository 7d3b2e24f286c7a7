"""The admin's worklist pages: settings (one row), items typed in by hand,
the HL7 message log (read-only), destinations.

Personas: an admin (a superuser), a RIS (sends one order through process_message).
"""

import pytest
from django.urls import reverse

from worklist.hl7in import process_message
from worklist.models import HL7Destination, HL7Message, ItemStatus, WorklistItem, WorklistSettings

# WhiteNoise warns that STATIC_ROOT does not exist: tests run without collectstatic.
pytestmark = [pytest.mark.django_db, pytest.mark.filterwarnings("ignore:No directory at")]

ITEMS = reverse("admin:worklist_worklistitem_changelist")
ORDER = (
    "MSH|^~\\&|RIS|HOSP|PACS|RAD|20240501101500||ORM^O01|MSG1|P|2.3.1||||||8859/1\r"
    "PID|1||PAT1^^^HOSP||Weiß^Anna||19700101|F\r"
    "ORC|NW|PL1|||SC||^^^20240502093000\r"
    "OBR|1|PL1||XR^Chest^L||||||||||||||ACC1||||||CR\r"
).encode("latin-1")


def item_form(**changes):
    data = {
        "status": ItemStatus.SCHEDULED,
        "patient_id": "P77",
        "patient_name": "Κώστας^Νίκος",
        "accession_number": "HAND1",
        "modality": "US",
        "scheduled_station_ae_title": "US01",
        "scheduled_start_date": "20240601",
        "scheduled_start_time": "080000",
    }
    data.update(changes)
    return data


def test_the_worklist_settings_list_goes_straight_to_the_one_row(an_admin):
    response = an_admin.get(reverse("admin:worklist_worklistsettings_changelist"))
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:worklist_worklistsettings_change", args=[1])


SETTINGS = reverse("admin:worklist_worklistsettings_change", args=[1])


def settings_form(**changes):
    """The settings form as the browser posts it."""
    row = WorklistSettings.load()
    form = {
        "hl7_port": row.hl7_port,
        "default_charset": row.default_charset,
        "allowed_senders": row.allowed_senders,
        "sending_application": row.sending_application,
        "sending_facility": row.sending_facility,
        "send_acknowledgement": "on",
        "max_message_size": row.max_message_size,
        "idle_timeout": row.idle_timeout,
        "frame_timeout": row.frame_timeout,
        "max_connections": row.max_connections,
    }
    form.update(changes)
    return form


def test_the_default_charset_is_changed_in_the_settings_form(an_admin):
    form = settings_form(default_charset="8859/7", sending_application="OURPACS", sending_facility="")
    response = an_admin.post(SETTINGS, form)
    assert response.status_code == 302
    assert (WorklistSettings.load().default_charset, WorklistSettings.load().sending_application) == (
        "8859/7",
        "OURPACS",
    )


def test_the_settings_page_warns_while_anyone_may_send_hl7(an_admin):
    WorklistSettings.load()
    assert "anyone who can reach the HL7 port" in an_admin.get(SETTINGS).content.decode()

    WorklistSettings.objects.filter(pk=1).update(allowed_senders="10.1.0.0/16")
    assert "anyone who can reach the HL7 port" not in an_admin.get(SETTINGS).content.decode()


def test_allowed_senders_are_saved_and_a_bad_entry_is_shown_with_its_line(an_admin):
    response = an_admin.post(SETTINGS, settings_form(allowed_senders="10.1.0.0/16\nris.example.org"))
    assert response.status_code == 200
    assert "line 2" in str(response.context["adminform"].form.errors["allowed_senders"])

    response = an_admin.post(SETTINGS, settings_form(allowed_senders="10.1.0.0/16\nRIS^HOSP", max_connections=8))
    assert response.status_code == 302
    row = WorklistSettings.load()
    assert (row.allowed_senders, row.max_connections) == ("10.1.0.0/16\nRIS^HOSP", 8)


def test_an_item_typed_in_by_hand_gets_a_study_uid_and_a_charset_for_its_name(an_admin):
    response = an_admin.post(reverse("admin:worklist_worklistitem_add"), item_form())

    assert response.status_code == 302, response.context["adminform"].form.errors
    item = WorklistItem.objects.get()
    assert item.study_instance_uid.startswith("1.2.826.0.1.3680043.")
    assert item.specific_character_set == "ISO_IR 192"
    assert item.patient_name_upper == "ΚΏΣΤΑΣ^ΝΊΚΟΣ"


def test_an_item_with_a_bad_station_ae_title_is_not_saved(an_admin):
    response = an_admin.post(reverse("admin:worklist_worklistitem_add"), item_form(scheduled_station_ae_title="US 01"))

    assert response.status_code == 200
    assert "scheduled_station_ae_title" in response.context["adminform"].form.errors
    assert not WorklistItem.objects.exists()


def test_items_are_found_by_a_lower_case_name_and_filtered_by_status(an_admin):
    assert b"MSA|AA" in process_message(ORDER)
    WorklistItem.objects.create(patient_id="P2", patient_name="Weiß^Bertha", status=ItemStatus.CANCELLED)

    found = an_admin.get(ITEMS, {"q": "weiß"})
    cancelled = an_admin.get(ITEMS, {"status__exact": "CANCELLED"})

    assert found.context["cl"].result_count == 2
    assert [i.patient_id for i in cancelled.context["cl"].result_list] == ["P2"]


def test_the_message_log_shows_the_message_and_the_ack_and_cannot_be_edited(an_admin):
    process_message(ORDER)
    row = HL7Message.objects.get()

    page = an_admin.get(reverse("admin:worklist_hl7message_change", args=[row.pk]))
    add = an_admin.get(reverse("admin:worklist_hl7message_add"))

    html = page.content.decode()
    assert "PID|1||PAT1^^^HOSP||Weiß^Anna" in html
    assert "MSA|AA|MSG1" in html
    assert 'name="_save"' not in html
    assert add.status_code == 403


def test_an_hl7_destination_is_added_in_the_admin(an_admin):
    response = an_admin.post(
        reverse("admin:worklist_hl7destination_add"),
        {"name": "RIS", "host": "ris.example", "port": 2576, "enabled": "on"},
    )

    assert response.status_code == 302
    assert HL7Destination.objects.get().port == 2576
