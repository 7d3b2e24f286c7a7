"""The audit trail of the web process: DICOMweb, the REST API, patient
links, the viewer, logins and admin changes each leave exactly one event
with the right actor and object; the admin lists events read-only and
exports the filtered list as CSV.

Personas: `a_reader` (staff with the view permissions), a patient with a
link, `an_admin` (a superuser), a stranger guessing passwords."""

import csv
import io

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.urls import reverse
from rest_framework.test import APIClient

from dicomnodes.models import Peer
from pacs_site import audit
from pacs_site.audit import Action
from pacs_site.models import AuditEvent, AuditSettings
from portal.tokens import create_token
from tests.support.dicomweb_site import VIEW, staff_with_token
from tests.support.portal import store_study
from worklist.models import WorklistItem

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def fresh_state(data_dir):
    """No lookups counted for the address, the audit settings read afresh."""
    cache.clear()
    audit.forget_settings()


@pytest.fixture
def study(tmp_path):
    return store_study(tmp_path, series=1, per_series=2, patient_id="WEB1")


@pytest.fixture
def a_reader(django_user_model):
    user, key = staff_with_token(django_user_model, "reader", codenames=VIEW)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def only(action):
    rows = list(AuditEvent.objects.filter(action=action))
    assert len(rows) == 1, [(r.action, r.actor, r.description) for r in rows]
    return rows[0]


# --- DICOMweb ------------------------------------------------------------------------------------


def test_a_qido_search_is_one_query_event_with_its_keys_but_not_the_patients(a_reader, study):
    response = a_reader.get("/dicomweb/studies", {"PatientID": "WEB1", "StudyDate": "20200101-", "limit": "5"})
    assert response.status_code == 200
    event = only(Action.QUERY)
    assert (event.actor, event.actor_kind, event.address) == ("reader", "user", "127.0.0.1")
    assert event.details["keys"] == {"StudyDate": "20200101-"}
    assert event.details["level"] == "STUDY"
    assert event.patient_id == ""


def test_patient_keys_of_a_qido_search_are_kept_when_the_settings_say_so(a_reader, study):
    AuditSettings.objects.update_or_create(pk=1, defaults={"query_patient_keys": True})
    a_reader.get("/dicomweb/studies", {"00100020": "WEB1"})
    event = only(Action.QUERY)
    assert event.details["keys"] == {"PatientID": "WEB1"}
    assert event.patient_id == "WEB1"


def test_wado_metadata_and_retrieve_are_one_read_event_each_with_the_study_and_its_patient(a_reader, study):
    uid = study.study_instance_uid
    assert a_reader.get(f"/dicomweb/studies/{uid}/metadata").status_code == 200
    response = a_reader.get(f"/dicomweb/studies/{uid}", HTTP_ACCEPT='multipart/related; type="application/dicom"')
    assert response.status_code == 200
    b"".join(response.streaming_content)
    rows = list(AuditEvent.objects.filter(action=Action.WEB_READ).order_by("id"))
    assert [r.details["service"] for r in rows] == ["WADO-RS metadata", "WADO-RS retrieve"]
    assert {(r.study_instance_uid, r.patient_id, r.actor) for r in rows} == {(uid, "WEB1", "reader")}


def test_frames_and_thumbnails_are_not_recorded(a_reader, study):
    uid = study.study_instance_uid
    a_reader.get(f"/dicomweb/studies/{uid}/thumbnail")
    assert not AuditEvent.objects.exists()


def test_a_refused_request_is_no_read():
    client = APIClient()
    assert client.get("/dicomweb/studies").status_code == 401
    assert not AuditEvent.objects.filter(action__in=[Action.QUERY, Action.WEB_READ]).exists()


# --- patient links and the viewer --------------------------------------------------------------


def test_a_patient_link_page_and_download_each_leave_one_event_with_the_token_id_never_the_token(client, study):
    link = create_token(study)
    assert client.get(f"/token?{link.clear}").status_code == 200
    response = client.get(reverse("portal:download", args=[study.pk]) + f"?{link.clear}")
    assert response.status_code == 200
    b"".join(response.streaming_content)
    for action in (Action.LINK_OPEN, Action.LINK_DOWNLOAD):
        event = only(action)
        assert (event.actor, event.actor_kind) == (f"link {link.row.pk}", "link")
        assert (event.study_instance_uid, event.patient_id) == (study.study_instance_uid, "WEB1")
        assert event.details["token_id"] == link.row.pk
    for event in AuditEvent.objects.all():
        assert link.clear not in f"{event.actor}{event.description}{event.details}"


def test_dicomweb_through_a_patient_link_is_recorded_without_the_token_in_its_path(client, study):
    link = create_token(study)
    uid = study.study_instance_uid
    assert client.get(f"/dicomweb/t/{link.clear}/studies/{uid}/metadata").status_code == 200
    event = only(Action.WEB_READ)
    assert event.actor == f"link {link.row.pk}"
    assert link.clear not in event.details["path"]
    assert event.details["path"].endswith(f"/studies/{uid}/metadata")


def test_opening_the_viewer_at_a_study_is_one_event_and_its_study_list_none(django_user_model, client, study):
    django_user_model.objects.create_superuser("doctor", password=PASSWORD)
    client.login(username="doctor", password=PASSWORD)
    assert client.get("/viewer/").status_code == 200
    assert not AuditEvent.objects.filter(action=Action.VIEWER_OPEN).exists()
    assert client.get(f"/viewer/viewer?StudyInstanceUIDs={study.study_instance_uid}").status_code == 200
    event = only(Action.VIEWER_OPEN)
    assert (event.actor, event.study_instance_uid, event.patient_id) == ("doctor", study.study_instance_uid, "WEB1")


def test_a_patient_links_viewer_is_one_event_of_the_link(client, study):
    link = create_token(study)
    assert client.get(f"/viewer/link?{link.clear}").status_code == 200
    event = only(Action.VIEWER_OPEN)
    assert event.actor == f"link {link.row.pk}"
    assert event.details["studies"] == [study.study_instance_uid]


# --- the REST API ------------------------------------------------------------------------------


def test_api_reads_of_studies_are_one_event_per_request(a_reader, study):
    assert a_reader.get("/api/studies/").status_code == 200
    assert a_reader.get(f"/api/studies/{study.pk}/").status_code == 200
    listed, one = AuditEvent.objects.filter(action=Action.WEB_READ).order_by("id")
    assert (listed.actor, listed.details["resource"], listed.details["count"]) == ("reader", "studies", 1)
    assert (one.study_instance_uid, one.patient_id, one.details["id"]) == (
        study.study_instance_uid,
        "WEB1",
        str(study.pk),
    )


def test_api_reads_of_worklist_items_are_recorded_with_the_patient(a_reader, django_user_model):
    django_user_model.objects.get(username="reader").user_permissions.add(
        Permission.objects.get(codename="view_worklistitem")
    )
    item = WorklistItem.objects.create(patient_id="MWL1", patient_name="Doe^Jane", accession_number="A1")
    assert a_reader.get(f"/api/worklist/{item.pk}/").status_code == 200
    event = only(Action.WEB_READ)
    assert (event.patient_id, event.details["resource"]) == ("MWL1", "worklist items")


# --- logins and the admin ----------------------------------------------------------------------


def test_a_login_and_a_failed_login_are_one_event_each_with_the_address(client, django_user_model):
    django_user_model.objects.create_superuser("boss", password=PASSWORD)
    client.post("/admin/login/", {"username": "boss", "password": "wrong"}, REMOTE_ADDR="192.0.2.7")
    failed = only(Action.LOGIN_FAILED)
    assert (failed.actor, failed.address, failed.outcome) == ("boss", "192.0.2.7", 4)
    assert "wrong" not in str(failed.details) + failed.description
    client.post("/admin/login/", {"username": "boss", "password": PASSWORD}, REMOTE_ADDR="192.0.2.8")
    ok = only(Action.LOGIN)
    assert (ok.actor, ok.address, ok.outcome) == ("boss", "192.0.2.8", 0)


def test_a_settings_change_in_the_admin_is_one_event_with_the_object_and_the_change(an_admin):
    assert an_admin.get(reverse("admin:pacs_site_auditsettings_changelist")).status_code == 302  # to the one row
    url = reverse("admin:pacs_site_auditsettings_change", args=[1])
    form = {
        "query_patient_keys": "on",
        "retention_days": "30",
        "syslog_port": "6514",
        "syslog_transport": "tls",
        "syslog_host": "",
        "syslog_ca_file": "",
    }
    response = an_admin.post(url, form)
    assert response.status_code == 302, response.content[:2000]
    event = only(Action.SETTINGS)
    assert event.actor == "admin"
    assert event.details["object"] == "pacs_site.auditsettings"
    assert event.details["action"] == "changed"
    assert "Keep events: days" in event.details["change"]


def test_deleting_several_peers_at_once_in_the_admin_is_one_event_each(an_admin):
    """Django logs a bulk deletion with one bulk INSERT (no post_save)."""
    peers = [Peer.objects.create(name=f"old {n}", ae_title=f"OLD{n}", host="192.0.2.1", port=104) for n in range(3)]
    url = reverse("admin:dicomnodes_peer_changelist")
    chosen = [str(p.pk) for p in peers[:2]]
    asked = an_admin.post(url, {"action": "delete_selected", "_selected_action": chosen})
    assert asked.status_code == 200  # the confirmation page
    assert not AuditEvent.objects.filter(action=Action.SETTINGS).exists()
    done = an_admin.post(url, {"action": "delete_selected", "_selected_action": chosen, "post": "yes"})
    assert done.status_code == 302
    events = AuditEvent.objects.filter(action=Action.SETTINGS).order_by("id")
    assert [(e.actor, e.details["action"], e.details["object"]) for e in events] == [
        ("admin", "deleted", "dicomnodes.peer")
    ] * 2
    assert {e.details["object_repr"] for e in events} == {str(p) for p in peers[:2]}
    an_admin.post(url, {"action": "delete_selected", "_selected_action": [str(peers[2].pk)], "post": "yes"})
    assert AuditEvent.objects.filter(action=Action.SETTINGS).count() == 3  # one alone: one event too


def test_the_audit_list_is_read_only(an_admin):
    audit.record(Action.QUERY, actor="SOMEONE")
    assert an_admin.get(reverse("admin:pacs_site_auditevent_changelist")).status_code == 200
    assert an_admin.get(reverse("admin:pacs_site_auditevent_add")).status_code == 403
    event = AuditEvent.objects.get(actor="SOMEONE")
    page = an_admin.get(reverse("admin:pacs_site_auditevent_change", args=[event.pk]))
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert (
        an_admin.post(reverse("admin:pacs_site_auditevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    )


def test_the_csv_export_is_the_filtered_list(an_admin):
    audit.record(Action.QUERY, actor="CTWS", patient_id="P7", details={"keys": {"Modality": "CT"}})
    audit.record(Action.QUERY, actor="MRWS", patient_id="P8")
    audit.record(Action.LOGIN, actor="someone")
    url = reverse("admin:pacs_site_auditevent_export")
    response = an_admin.get(url, {"action": "query", "q": "P7"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:4] == ["at", "action", "outcome", "actor"]
    assert [(r[1], r[3], r[6]) for r in rows[1:]] == [("query", "CTWS", "P7")]
    assert '"Modality": "CT"' in rows[1][9]
    everything = an_admin.get(url)
    lines = b"".join(everything.streaming_content).decode().strip().splitlines()
    assert len(lines) == 1 + AuditEvent.objects.count()  # the admin's login too


def test_the_csv_export_needs_the_view_permission(client, django_user_model):
    django_user_model.objects.create_user("clerk", password=PASSWORD, is_staff=True)
    client.login(username="clerk", password=PASSWORD)
    assert client.get(reverse("admin:pacs_site_auditevent_export")).status_code == 403
