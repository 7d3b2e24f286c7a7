"""Audit events forwarded to a syslog collector the test starts (TCP, and
TLS with a self-signed certificate): RFC 5424 messages in RFC 6587 octet
counting frames, whose MSG is a PS3.15 A.5 audit message with the
elements and EventID codes the events call for; a collector that is down
costs the caller nothing (bounded queue, drops counted) and is reached
again once it is back."""

import base64
import json
import re
import socket
import ssl
import threading
import time
from xml.etree import ElementTree as ET

import pytest

from pacs_site import atna, audit, syslog
from pacs_site.audit import Action
from pacs_site.models import AuditSettings
from tests.support.portal import self_signed
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.django_db

# RFC 5424 6: <PRI>VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP STRUCTURED-DATA SP MSG
HEADER = re.compile(
    rb"^<85>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [\x21-\x7e]{1,255} pacs [\x21-\x7e]{1,128} IHE\+RFC-3881 - "
)
BOM = b"\xef\xbb\xbf"


class Collector:
    """A syslog collector: reads octet-counted frames (RFC 6587 3.4.1) from
    each connection; `messages` in arrival order."""

    def __init__(self, *, port=None, tls=None):
        self.port = port or free_port()
        self.tls = tls
        self.messages = []
        self.server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while self.running:
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        try:
            if self.tls is not None:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(10)
            buffer = b""
            while self.running:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                while b" " in buffer[:12]:
                    length, _, rest = buffer.partition(b" ")
                    assert length.isdigit(), buffer[:40]
                    if len(rest) < int(length):
                        break
                    self.messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]
        except OSError:
            return
        finally:
            conn.close()

    def stop(self):
        self.running = False
        self.server.close()
        self.thread.join(5)


@pytest.fixture
def forwarder():
    """This test's own forwarder (the process-wide one, fresh), stopped after it."""
    syslog._forwarder = None
    yield syslog.forwarder
    if syslog._forwarder is not None:
        syslog._forwarder.stop()
    syslog._forwarder = None


@pytest.fixture
def collector():
    running = Collector()
    yield running
    running.stop()


def forward_to(port, *, transport="tcp", ca_file=""):
    AuditSettings.objects.update_or_create(
        pk=1,
        defaults=dict(
            syslog_enabled=True,
            syslog_host="127.0.0.1",
            syslog_port=port,
            syslog_transport=transport,
            syslog_ca_file=str(ca_file),
        ),
    )
    audit.forget_settings()


def audit_message(message):
    """The header checked, the XML of the message."""
    assert HEADER.match(message), message[:120]
    _, _, body = message.partition(b" IHE+RFC-3881 - ")
    assert body.startswith(BOM)
    return ET.fromstring(body[len(BOM) :])


def code_of(element):
    return element.get("csd-code"), element.get("codeSystemName"), element.get("originalText")


def test_a_query_goes_over_tcp_as_an_rfc5424_audit_message_with_every_element(forwarder, collector):
    forward_to(collector.port)
    audit.record(
        Action.QUERY,
        actor="VIEWER1",
        actor_kind="ae",
        address="127.0.0.1",
        patient_id="P1",
        study_uid="1.2.3",
        details={"model": "STUDY", "level": "STUDY", "keys": {"StudyDate": "2024"}},
    )
    wait_until(lambda: collector.messages, 10, message="the collector to receive the message")
    root = audit_message(collector.messages[0])
    assert root.tag == "AuditMessage"
    assert [child.tag for child in root] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]
    ident = root.find("EventIdentification")
    assert (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == ("E", "0")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", ident.get("EventDateTime"))
    assert code_of(ident.find("EventID")) == ("110112", "DCM", "Query")
    requestor, server = root.findall("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("UserIsRequestor")) == ("VIEWER1", "true")
    assert (requestor.get("NetworkAccessPointID"), requestor.get("NetworkAccessPointTypeCode")) == ("127.0.0.1", "2")
    assert server.get("UserIsRequestor") == "false"
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == server.get("UserID")
    patient, study, query = root.findall("ParticipantObjectIdentification")
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode")) == ("P1", "1")
    assert patient.get("ParticipantObjectTypeCodeRole") == "1"
    assert code_of(patient.find("ParticipantObjectIDTypeCode"))[0] == "2"
    assert study.get("ParticipantObjectID") == "1.2.3"
    assert code_of(study.find("ParticipantObjectIDTypeCode"))[0] == "110180"
    assert query.get("ParticipantObjectID") == "1.2.840.10008.5.1.4.1.2.2.1"
    keys = json.loads(base64.b64decode(query.find("ParticipantObjectQuery").text))
    assert keys == {"level": "STUDY", "keys": {"StudyDate": "2024"}}


def test_each_event_is_one_message_in_order(forwarder, collector):
    forward_to(collector.port)
    made = [audit.record(Action.LINK_OPEN, actor=f"link {n}", study_uid=f"1.2.{n}") for n in range(3)]
    wait_until(lambda: len(collector.messages) >= 3, 10, message="three messages")
    sender = syslog.forwarder()
    wait_until(lambda: sender.queue.empty() and sender.sent == 3, 5, message="the forwarder to be idle")
    assert len(collector.messages) == 3
    ids = [
        audit_message(m).find("ParticipantObjectIdentification").get("ParticipantObjectID") for m in collector.messages
    ]
    assert ids == [e.study_instance_uid for e in made]
    assert {code_of(audit_message(m).find("EventIdentification/EventID"))[0] for m in collector.messages} == {"110103"}


def test_a_failed_login_goes_over_tls_as_user_authentication(forwarder, client, tmp_path):
    cert, key = self_signed(tmp_path / "tls", name="collector")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls = Collector(tls=context)
    try:
        forward_to(tls.port, transport="tls", ca_file=cert)
        client.post("/admin/login/", {"username": "mallory", "password": "guess"}, REMOTE_ADDR="192.0.2.9")
        wait_until(lambda: tls.messages, 10, message="the TLS collector to receive the message")
        root = audit_message(tls.messages[0])
    finally:
        tls.stop()
    ident = root.find("EventIdentification")
    assert code_of(ident.find("EventID")) == ("110114", "DCM", "User Authentication")
    assert code_of(ident.find("EventTypeCode")) == ("110122", "DCM", "Login")
    assert ident.get("EventOutcomeIndicator") == "4"
    requestor = root.find("ActiveParticipant")
    assert (requestor.get("UserID"), requestor.get("NetworkAccessPointID")) == ("mallory", "192.0.2.9")
    assert b"guess" not in tls.messages[0]


def test_a_collector_that_fails_the_tls_check_gets_nothing(forwarder, tmp_path):
    cert, key = self_signed(tmp_path / "tls", name="collector")
    other, _ = self_signed(tmp_path / "other", name="other")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    tls = Collector(tls=context)
    try:
        forward_to(tls.port, transport="tls", ca_file=other)
        audit.record(Action.LOGIN, actor="someone")
        wait_until(lambda: syslog.forwarder().failures >= 1, 10, message="the certificate check to fail")
        assert tls.messages == []
        assert "certificate" in syslog.forwarder().last_error.lower()
    finally:
        tls.stop()


def test_a_collector_that_is_down_costs_nothing_drops_are_counted_and_it_is_reached_when_back():
    port = free_port()
    destination = syslog.Destination("127.0.0.1", port, "tcp")
    sender = syslog.Forwarder(queue_size=3)
    event = audit.record(Action.LOGIN, actor="someone")
    try:
        started = time.monotonic()
        for _ in range(20):
            sender.put(event, destination, "PACS")
        assert time.monotonic() - started < 0.5
        wait_until(lambda: sender.failures >= 1, 5, message="a failed connection")
        assert sender.dropped >= 20 - 3 - 1  # the queue holds 3, the thread holds 1
        back = Collector(port=port)
        try:
            wait_until(lambda: back.messages, 10, message="the collector, back, to be reached")
            wait_until(lambda: sender.queue.empty(), 5, message="the backlog to be sent")
            assert sender.sent == 20 - sender.dropped
            assert HEADER.match(back.messages[0])
        finally:
            back.stop()
    finally:
        sender.stop()


@pytest.mark.parametrize(
    "action, details, code, action_code",
    [
        (Action.ASSOCIATION, {"instances_stored": 3}, "110107", "C"),
        (Action.ASSOCIATION, {"instances_stored": 0}, "110100", "E"),
        (Action.RETRIEVE, {}, "110106", "R"),
        (Action.WEB_READ, {}, "110103", "R"),
        (Action.WEB_STORE, {}, "110107", "C"),
        (Action.BURN, {}, "110106", "R"),
        (Action.SEND, {}, "110106", "R"),
        (Action.IMPORT, {}, "110107", "C"),
        (Action.DELETE, {}, "110105", "D"),
        (Action.CORRECT, {}, "110110", "U"),
        (Action.MERGE, {}, "110110", "U"),
        (Action.SETTINGS, {}, "110113", "E"),
        (Action.LOGIN, {}, "110114", "E"),
    ],
)
def test_each_action_has_its_event_id(action, details, code, action_code):
    row = audit.event(action, actor="someone", details=details)
    root = ET.fromstring(atna.audit_message(row, "PACS"))
    ident = root.find("EventIdentification")
    assert (code_of(ident.find("EventID"))[0], ident.get("EventActionCode")) == (code, action_code)
