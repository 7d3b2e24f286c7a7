"""An AuditEvent as a DICOM audit message (PS3.15 A.5, the ATNA schema) in
an RFC 5424 syslog message.

The message (`audit_message(event, source_id)`, bytes of UTF-8 XML):

    AuditMessage
      EventIdentification  EventActionCode, EventDateTime, EventOutcomeIndicator
        EventID            csd-code/codeSystemName/originalText (CID 400, table EVENTS)
        EventTypeCode      login: 110122 Login
      ActiveParticipant    the requestor: UserID (user name, AE title, "link 12"),
                           UserIsRequestor="true", NetworkAccessPointID (its address)
      ActiveParticipant    this server: UserID = our AE title, UserIsRequestor="false"
      AuditSourceIdentification  AuditSourceID = our AE title; AuditSourceTypeCode 4
      ParticipantObjectIdentification  the patient (type 1, role 1, ID type 2)
      ParticipantObjectIdentification  each study (type 2, role 3, ID type 110180)
      ParticipantObjectIdentification  a query (type 2, role 3, ID type 110181,
                                       ParticipantObjectQuery = the keys, base64 JSON)

`syslog_message(event, ...)` wraps it as RFC 5424 (facility 10
security/authorization, severity 5 notice: PRI 85; MSGID IHE+RFC-3881, as
IHE ATNA asks) and `frame()` adds RFC 6587 octet counting (also RFC 5425's).
"""

import base64
import datetime as dt
import ipaddress
import json
from xml.etree import ElementTree as ET

# action -> (EventID code, its meaning, EventActionCode)
EVENTS = {
    "association": ("110100", "Application Activity", "E"),
    "query": ("110112", "Query", "E"),
    "retrieve": ("110106", "Export", "R"),
    "web.read": ("110103", "DICOM Instances Accessed", "R"),
    "web.store": ("110107", "Import", "C"),
    "link.open": ("110103", "DICOM Instances Accessed", "R"),
    "link.download": ("110106", "Export", "R"),
    "viewer.open": ("110103", "DICOM Instances Accessed", "R"),
    "burn": ("110106", "Export", "R"),
    "send": ("110106", "Export", "R"),
    "import": ("110107", "Import", "C"),
    "delete": ("110105", "DICOM Study Deleted", "D"),
    "correct": ("110110", "Patient Record", "U"),
    "merge": ("110110", "Patient Record", "U"),
    "settings": ("110113", "Security Alert", "E"),
    "login": ("110114", "User Authentication", "E"),
    "login.failed": ("110114", "User Authentication", "E"),
}
DEFAULT_EVENT = ("110100", "Application Activity", "E")
IMPORT = ("110107", "Import", "C")  # an association that stored instances
QUERY_MODELS = {  # C-FIND information model -> its SOP class (the query's participant object)
    "PATIENT": "1.2.840.10008.5.1.4.1.2.1.1",
    "STUDY": "1.2.840.10008.5.1.4.1.2.2.1",
    "WORKLIST": "1.2.840.10008.5.1.4.31",
}
MAX_STUDIES = 50
PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice)
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"


def _code(parent, tag, code, system, meaning):
    return ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def _is_ip(address):
    try:
        ipaddress.ip_address(address)
        return True
    except ValueError:
        return False


def event_id(event):
    if event.action == "association" and (event.details or {}).get("instances_stored"):
        return IMPORT
    return EVENTS.get(event.action, DEFAULT_EVENT)


def audit_message(event, source_id) -> bytes:
    """The PS3.15 A.5 audit message of `event` (UTF-8 XML, no declaration)."""
    code, meaning, action_code = event_id(event)
    details = event.details or {}
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action_code,
            "EventDateTime": event.at.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds"),
            "EventOutcomeIndicator": str(int(event.outcome)),
        },
    )
    _code(ident, "EventID", code, "DCM", meaning)
    if event.action in ("login", "login.failed"):
        _code(ident, "EventTypeCode", "110122", "DCM", "Login")
    if event.description:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.description
    requestor = {"UserID": event.actor or "unknown", "UserIsRequestor": "true"}
    if event.actor_kind == "ae":
        requestor["AlternativeUserID"] = f"AETITLES={event.actor}"
    if event.address:
        requestor["NetworkAccessPointID"] = event.address
        requestor["NetworkAccessPointTypeCode"] = "2" if _is_ip(event.address) else "1"
    person = ET.SubElement(root, "ActiveParticipant", requestor)
    _code(person, "RoleIDCode", "110153", "DCM", "Source Role ID")
    server = ET.SubElement(
        root,
        "ActiveParticipant",
        {"UserID": source_id, "AlternativeUserID": f"AETITLES={source_id}", "UserIsRequestor": "false"},
    )
    _code(server, "RoleIDCode", "110152", "DCM", "Destination Role ID")
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    _code(source, "AuditSourceTypeCode", "4", "DCM", "Application Server")
    if event.patient_id:
        patient = _object(root, event.patient_id, type_code="1", role="1")
        _code(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    studies = [event.study_instance_uid] if event.study_instance_uid else []
    studies += [uid for uid in details.get("studies", []) if uid not in studies]
    for uid in studies[:MAX_STUDIES]:
        study = _object(root, uid, type_code="2", role="3")
        _code(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
    if event.action == "query":
        model = details.get("model", "")
        query = _object(root, QUERY_MODELS.get(model, model or "QIDO-RS"), type_code="2", role="3")
        _code(query, "ParticipantObjectIDTypeCode", "110181", "DCM", "SOP Class UID")
        keys = json.dumps({"level": details.get("level", ""), "keys": details.get("keys", {})}, ensure_ascii=False)
        ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(keys.encode()).decode("ascii")
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def _object(root, object_id, *, type_code, role):
    return ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": object_id,
            "ParticipantObjectTypeCode": type_code,
            "ParticipantObjectTypeCodeRole": role,
        },
    )


def _header_field(text, limit):
    """An RFC 5424 header field: printable US-ASCII without spaces, or "-"."""
    clean = "".join(c for c in str(text) if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def syslog_message(event, *, source_id, hostname, app_name="pacs", procid="-") -> bytes:
    """One RFC 5424 message: HEADER SP "-" (no structured data) SP BOM MSG."""
    timestamp = event.at.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    header = " ".join(
        [
            f"<{PRI}>1",
            timestamp,
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(procid, 128),
            MSGID,
            "-",
        ]
    )
    return header.encode("ascii") + b" " + BOM + audit_message(event, source_id)


def frame(message: bytes) -> bytes:
    """RFC 6587 3.4.1 octet counting (RFC 5425 4.3 over TLS): MSG-LEN SP MSG."""
    return str(len(message)).encode("ascii") + b" " + message
