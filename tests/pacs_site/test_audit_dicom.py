"""The audit trail of runscp: one event per association (who, which
services, how many instances), per C-FIND (level, keys; patient keys only
when the settings say so), per C-MOVE / C-GET (destination, studies,
count) — driven by DCMTK storescu, findscu, movescu and getscu; and
forwarded by runscp itself to a syslog collector."""

import pytest
from pydicom.uid import generate_uid

from dicomnodes.models import Peer
from pacs_site.audit import Action
from pacs_site.models import AuditEvent, AuditSettings
from tests.dicomnodes.test_runscp_retrieve import move_destination
from tests.pacs_site.test_audit_syslog import Collector, audit_message, code_of
from tests.support.dicomdata import make_ct_series
from tests.support.processes import MODALITY, STRANGER, wait_until

pytestmark = pytest.mark.archive

VIEWER = "AUDITVIEW"


def events(action, actor):
    return AuditEvent.objects.filter(action=action, actor=actor).order_by("at", "id")


def exactly_one(action, actor):
    """The one event of `action` by `actor`, once written (the index writer
    writes them after the association's end), and still one a moment later."""
    wait_until(lambda: events(action, actor).exists(), 10, message=f"a {action} event by {actor}")
    rows = list(events(action, actor))
    assert len(rows) == 1, [(r.action, r.description) for r in rows]
    return rows[0]


@pytest.fixture
def a_study(shared_scp, tmp_path):
    """Three CT images of patient AUD1 stored by the modality; a viewer peer that may query and retrieve."""
    study = generate_uid()
    make_ct_series(tmp_path / "ct", 3, study_uid=study, patient_id="AUD1")
    assert shared_scp.store(tmp_path / "ct").returncode == 0
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True, may_retrieve=True)
    shared_scp.wait_until_allowed(VIEWER, "move")
    return study


def test_a_storing_association_leaves_one_event_with_its_caller_services_and_count(shared_scp, a_study):
    event = exactly_one(Action.ASSOCIATION, MODALITY)
    assert event.actor_kind == "ae"
    assert event.address == "127.0.0.1"
    assert event.details["services"] == ["store"]
    assert event.details["instances_stored"] == 3
    assert event.details["called_ae"] == shared_scp.ae_title
    assert (event.study_instance_uid, event.patient_id) == (a_study, "AUD1")
    assert event.outcome == 0


def test_a_c_find_leaves_one_query_event_without_patient_keys_by_default(shared_scp, a_study):
    result = shared_scp.qr(
        "findscu", "QueryRetrieveLevel=STUDY", "PatientID=AUD1", "StudyInstanceUID", "StudyDate", calling=VIEWER
    )
    assert result.returncode == 0, result.stderr
    query = exactly_one(Action.QUERY, VIEWER)
    assert query.details["level"] == "STUDY"
    assert query.details["model"] == "STUDY"
    assert set(query.details["keys"]) == {"StudyInstanceUID", "StudyDate"}
    assert query.patient_id == ""
    # Its association: one event saying what it was used for (the allow-checks before opened none).
    wait_until(lambda: events(Action.ASSOCIATION, VIEWER).filter(details__services=["find"]).exists(), 10)


def test_a_rejected_association_is_one_failed_event_with_the_reason(shared_scp):
    result = shared_scp.qr("findscu", "QueryRetrieveLevel=STUDY", "StudyDate", calling=STRANGER)
    assert result.returncode != 0
    event = exactly_one(Action.ASSOCIATION, STRANGER)
    assert (event.outcome, event.details["result"]) == (4, "rejected")
    assert event.details["reason"] == "calling AE title not recognised"
    assert not events(Action.QUERY, STRANGER).exists()


def test_patient_keys_are_recorded_when_the_settings_say_so(start_scp, tmp_path):
    AuditSettings.objects.update_or_create(pk=1, defaults={"query_patient_keys": True})
    scp = start_scp()
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True)
    scp.wait_until_allowed(VIEWER, "find")
    result = scp.qr("findscu", "QueryRetrieveLevel=PATIENT", "PatientID=AUD9", "PatientName", calling=VIEWER, root="-P")
    assert result.returncode == 0, result.stderr
    query = exactly_one(Action.QUERY, VIEWER)
    assert query.details["keys"] == {"PatientID": "AUD9", "PatientName": ""}
    assert query.patient_id == "AUD9"
    assert query.details["level"] == "PATIENT"


def test_a_c_move_leaves_one_retrieve_event_with_destination_study_and_count(shared_scp, a_study, tmp_path):
    with move_destination(shared_scp, tmp_path / "received", "AUDDEST") as out:
        result = shared_scp.qr(
            "movescu",
            "QueryRetrieveLevel=STUDY",
            f"StudyInstanceUID={a_study}",
            calling=VIEWER,
            options=["-aem", "AUDDEST"],
        )
        assert result.returncode == 0, result.stderr
        assert len(list(out.iterdir())) == 3
    move = exactly_one(Action.RETRIEVE, VIEWER)
    assert move.details["service"] == "C-MOVE"
    assert move.details["destination"] == "AUDDEST"
    assert move.details["studies"] == [a_study]
    assert move.details["instances"] == 3
    assert (move.study_instance_uid, move.patient_id) == (a_study, "AUD1")
    assert move.outcome == 0


def test_a_c_get_leaves_one_retrieve_event_and_a_refused_move_a_failed_one(shared_scp, a_study, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    result = shared_scp.qr(
        "getscu", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={a_study}", calling=VIEWER, options=["-od", out]
    )
    assert result.returncode == 0, result.stderr
    get = exactly_one(Action.RETRIEVE, VIEWER)
    assert (get.details["service"], get.details["instances"], get.details["destination"]) == ("C-GET", 3, VIEWER)
    shared_scp.qr(
        "movescu",
        "QueryRetrieveLevel=STUDY",
        f"StudyInstanceUID={a_study}",
        calling=VIEWER,
        options=["-aem", "NOWHERE"],
    )
    wait_until(lambda: events(Action.RETRIEVE, VIEWER).count() == 2, 10, message="the refused move's event")
    refused = events(Action.RETRIEVE, VIEWER).last()
    assert refused.outcome == 4
    assert refused.details["destination"] == "NOWHERE"
    assert refused.details["instances"] == 0


def test_runscp_forwards_its_events_to_the_syslog_collector(start_scp, tmp_path):
    collector = Collector()
    try:
        AuditSettings.objects.update_or_create(
            pk=1,
            defaults=dict(
                syslog_enabled=True, syslog_host="127.0.0.1", syslog_port=collector.port, syslog_transport="tcp"
            ),
        )
        scp = start_scp()
        Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True)
        scp.wait_until_allowed(VIEWER, "find")
        assert scp.qr("findscu", "QueryRetrieveLevel=STUDY", "StudyDate", calling=VIEWER).returncode == 0

        def query_messages():
            roots = [audit_message(m) for m in list(collector.messages)]
            return [r for r in roots if code_of(r.find("EventIdentification/EventID"))[0] == "110112"]

        wait_until(query_messages, 15, message="runscp's query message at the collector")
        (query,) = query_messages()
        assert query.find("ActiveParticipant").get("UserID") == VIEWER
        assert query.find("AuditSourceIdentification").get("AuditSourceID") == scp.ae_title
    finally:
        collector.stop()
