"""The audit trail: who saw or changed what (issue 15).

Every app records its own events with `record(...)`; one row per event in
`AuditEvent`.  Actions are short dotted names (see `Action`).  Never pass a
token or a password: the actor of a patient link is "link <id>".
"""

import logging

from pacs_site.models import AuditEvent, AuditOutcome

logger = logging.getLogger(__name__)


class Action:
    ASSOCIATION = "association"  # an incoming DICOM association ended
    QUERY = "query"  # C-FIND
    RETRIEVE = "retrieve"  # C-MOVE / C-GET
    WEB_READ = "web.read"  # DICOMweb / REST API read of patient data
    WEB_STORE = "web.store"  # STOW-RS
    LINK_OPEN = "link.open"
    LINK_DOWNLOAD = "link.download"
    VIEWER_OPEN = "viewer.open"
    BURN = "burn"
    SEND = "send"
    DELETE = "delete"
    CORRECT = "correct"
    MERGE = "merge"
    SETTINGS = "settings"
    LOGIN = "login"
    LOGIN_FAILED = "login.failed"


def record(
    action,
    *,
    actor="",
    actor_kind="system",
    address="",
    outcome=AuditOutcome.SUCCESS,
    patient_id="",
    study_uid="",
    description="",
    details=None,
):
    """Write one audit event; returns it (None if it could not be written:
    the failure is logged, the audited work goes on)."""
    try:
        return AuditEvent.objects.create(
            action=action,
            actor=str(actor)[:150],
            actor_kind=actor_kind,
            address=str(address)[:64],
            outcome=int(outcome),
            patient_id=str(patient_id)[:64],
            study_instance_uid=str(study_uid)[:64],
            description=str(description)[:255],
            details=details or {},
        )
    except Exception:
        logger.exception("audit event %s by %s could not be written", action, actor)
        return None
