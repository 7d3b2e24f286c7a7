"""Audit events of runscp's associations, off the DICOM hot path.

1. While an association runs, its requests are noted in memory on its
   `AssociationState` (`note_find`, `note_retrieve`, `note_service`): no
   database write per request, none per instance.
2. When it ends, `association_ended(state)` (called by `handlers.log_close`
   just before the close goes to the index writer) keeps what was noted,
   keyed by the association's id.
3. The index writer commits the close and sends `association_closed`
   (dicomnodes/signals.py) from its own thread, after the senders were
   released; `on_association_closed` then makes the association's event and
   one event per C-FIND / C-MOVE / C-GET request, and queues them for a
   spool thread that writes what has gathered in one INSERT (`audit.Spool`;
   at exit it writes what waits).

A C-FIND's event is therefore written when its association ends (findscu
and most workstations open one per query).  Measured with bench/query.py:
see docs/audit.md.
"""

import logging
import threading

from django.utils import timezone

from dicomnodes.models import AssociationResult, Study
from pacs_site.audit import Action, Spool, current_settings, event, query_keys
from pacs_site.models import AuditOutcome

logger = logging.getLogger(__name__)

MAX_REQUESTS = 500  # request events kept per association; more are counted only
MAX_STUDIES = 50  # study UIDs kept in one event's details
MAX_ENDED = 10_000  # associations ended but not yet committed (a bound should commits fail)

_ended = {}
_lock = threading.Lock()
# The events are written by a spool thread of their own, in batches: written
# by the index writer, an association's events cost it a commit of its own,
# 7.8 ms per association measured (one C-FIND each, SQLite, load 10), which
# delayed the next group commit of instances; queued, about 0.1 ms.  A
# rejection's row is no close, so no association_closed follows it: its
# event is queued from the association's thread.
_events = Spool()


def _state_notes(state):
    notes = getattr(state, "audit", None)
    if notes is None:
        notes = state.audit = {"services": set(), "requests": [], "dropped": 0}
    return notes


def note_service(state, service):
    """`service`: "echo", "store", "find", "move", "get"."""
    if state is not None:
        _state_notes(state)["services"].add(service)


def _note_request(state, request):
    notes = _state_notes(state)
    notes["services"].add(request["service"])
    if len(notes["requests"]) < MAX_REQUESTS:
        notes["requests"].append(request)
    else:
        notes["dropped"] += 1
    return request


def _pairs(identifier):
    """(keyword, value) of an identifier's elements, as text (never raises)."""
    pairs = []
    try:
        for elem in identifier:
            if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
                continue
            value = "" if elem.value is None else elem.value
            if elem.VR == "SQ":
                value = f"({len(value)} items)"
            pairs.append((elem.keyword or str(elem.tag), str(value)))
    except Exception:  # a malformed identifier: the refusal says why, the event says what was readable
        logger.debug("identifier not fully readable for the audit", exc_info=True)
    return pairs


def _level(identifier):
    try:
        return str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    except Exception:
        return ""


def _uids(identifier, keyword):
    try:
        value = identifier.get(keyword)
    except Exception:
        return []
    if value is None or value == "":
        return []
    values = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip() for v in values if str(v).strip()][:MAX_STUDIES]


def note_find(state, identifier, *, model):
    """A C-FIND request (one event when the association ends); returns its
    note, for `find_answered`."""
    if state is None:
        return None
    return _note_request(
        state,
        {
            "service": "find",
            "at": timezone.now(),
            "model": str(model),
            "level": _level(identifier),
            "pairs": _pairs(identifier),
            "outcome": int(AuditOutcome.SUCCESS),
            "comment": "",
        },
    )


def find_answered(note, code, comment=""):
    """The final status of a noted C-FIND: a refusal or failure is a minor
    failure (PS3.15 EventOutcomeIndicator 4), a cancel stays a success."""
    if note is not None and code not in (0x0000, 0xFE00):
        note["outcome"] = int(AuditOutcome.MINOR_FAILURE)
        note["comment"] = str(comment or f"status {code:04X}")[:64]


def note_retrieve(state, service, identifier, *, plan, destination=""):
    """A C-MOVE (`service` "move", with its destination) or C-GET ("get")
    request and its `plan` (qr.Plan: the instances it names; or qr.Refusal)."""
    if state is None:
        return
    targets = getattr(plan, "targets", None)
    refused = targets is None
    _note_request(
        state,
        {
            "service": service,
            "at": timezone.now(),
            "level": _level(identifier),
            "destination": destination,
            "studies": _uids(identifier, "StudyInstanceUID"),
            "patient_id": ", ".join(_uids(identifier, "PatientID")),
            "count": 0 if refused else len(targets),
            "outcome": int(AuditOutcome.MINOR_FAILURE if refused else AuditOutcome.SUCCESS),
            "comment": str(getattr(plan, "comment", ""))[:64] if refused else "",
        },
    )


def association_ended(state):
    """Keep what was noted until the index writer has committed the close."""
    notes = _state_notes(state)
    if state.received or state.failed:
        notes["services"].add("store")
    with _lock:
        if len(_ended) >= MAX_ENDED:
            _ended.pop(next(iter(_ended)))
        _ended[state.id] = notes


def association_rejected(state, reason):
    """A rejected association (called AE title, calling AE title, local limit): one event."""
    _events.put(
        event(
            Action.ASSOCIATION,
            actor=state.calling_ae,
            actor_kind="ae",
            address=state.address,
            outcome=AuditOutcome.MINOR_FAILURE,
            description=f"{state.calling_ae} to {state.called_ae}: rejected: {reason}",
            details={
                "association": str(state.id),
                "called_ae": state.called_ae,
                "services": [],
                "result": "rejected",
                "reason": reason,
            },
            at=state.started_at,
        )
    )


def on_association_closed(sender, association, sop_instance_uids=(), **kwargs):
    """The receiver of `dicomnodes.signals.association_closed` (index writer thread)."""
    with _lock:
        notes = _ended.pop(association.pk, None) or {"services": set(), "requests": [], "dropped": 0}
    try:
        rows = events_of(association, notes, list(sop_instance_uids)[:1000])
    except Exception:
        logger.exception("audit events of association %s could not be made", association.pk)
        return
    for row in rows:
        _events.put(row)


def events_of(association, notes, sop_instance_uids):
    """The association's event, then one per request (unsaved rows)."""
    ae, address = association.calling_ae, association.peer_address
    include_patient = current_settings().query_patient_keys
    requests = notes["requests"]
    stored = []
    if sop_instance_uids:
        stored = list(
            Study.objects.filter(series__instances__sop_instance_uid__in=sop_instance_uids)
            .values_list("study_instance_uid", "patient_id")
            .distinct()[:MAX_STUDIES]
        )
    wanted = {uid for r in requests for uid in r.get("studies", ())}
    patient_of = (
        dict(Study.objects.filter(study_instance_uid__in=list(wanted)).values_list("study_instance_uid", "patient_id"))
        if wanted
        else {}
    )
    services = sorted(notes["services"])
    released = association.result == AssociationResult.RELEASED
    rows = [
        event(
            Action.ASSOCIATION,
            actor=ae,
            actor_kind="ae",
            address=address,
            outcome=AuditOutcome.SUCCESS if released else AuditOutcome.MINOR_FAILURE,
            patient_id=stored[0][1] if len(stored) == 1 else "",
            study_uid=stored[0][0] if len(stored) == 1 else "",
            description=f"{ae} to {association.called_ae}: {', '.join(services) or 'nothing'}, "
            f"{association.instances_received} instances stored",
            details={
                "association": str(association.pk),
                "called_ae": association.called_ae,
                "services": services,
                "instances_stored": association.instances_received,
                "instances_failed": association.instances_failed,
                "bytes": association.bytes_received,
                "result": association.result,
                "reason": association.reason,
                "requests": len(requests) + notes["dropped"],
                "requests_not_recorded": notes["dropped"],
                "studies": [uid for uid, _ in stored],
            },
            at=association.ended_at or timezone.now(),
        )
    ]
    for request in requests:
        rows.append(_request_event(association, request, include_patient, patient_of))
    return rows


def _request_event(association, request, include_patient, patient_of):
    ae, address = association.calling_ae, association.peer_address
    common = dict(actor=ae, actor_kind="ae", address=address, outcome=request["outcome"], at=request["at"])
    if request["service"] == "find":
        keys = query_keys(request["pairs"], include_patient=include_patient)
        return event(
            Action.QUERY,
            **common,
            patient_id=keys.get("PatientID", "") if include_patient else "",
            study_uid=keys.get("StudyInstanceUID", "") if "\\" not in keys.get("StudyInstanceUID", "") else "",
            description=f"C-FIND {request['level'] or '?'} by {ae}"
            + (f": {request['comment']}" if request["comment"] else ""),
            details={
                "association": str(association.pk),
                "service": "C-FIND",
                "model": request["model"],
                "level": request["level"],
                "keys": keys,
            },
        )
    studies = request["studies"]
    patient_id = request["patient_id"] or next((patient_of[s] for s in studies if s in patient_of), "")
    service = "C-MOVE" if request["service"] == "move" else "C-GET"
    where = f" to {request['destination']}" if request["service"] == "move" else ""
    return event(
        Action.RETRIEVE,
        **common,
        patient_id=patient_id,
        study_uid=studies[0] if studies else "",
        description=f"{service} {request['level'] or '?'} by {ae}{where}: {request['count']} instances"
        + (f" ({request['comment']})" if request["comment"] else ""),
        details={
            "association": str(association.pk),
            "service": service,
            "level": request["level"],
            "destination": request["destination"] or ae,
            "studies": studies,
            "instances": request["count"],
        },
    )
