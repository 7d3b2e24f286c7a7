"""The association life cycle and C-STORE of `runscp`, as pure cores that
`acceptor.AcceptorSession` calls: `check_association` (A-ASSOCIATE-RQ),
`association_row`, `log_rejection` and `log_close` (the association log),
`answer_store` (C-STORE, tested without a socket).

They get their dependencies (the current configuration, the index writer)
passed in, stay short and delegate to `archive.ingest` and `access`.
"""

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from dicomnodes.archive.index import AssociationClose, AssociationOpen, SenderMarked
from dicomnodes.archive.ingest import store_received
from dicomnodes.dimse import REJECT_CALLED_AE, REJECT_CALLING_AE, Status
from dicomnodes.models import AssociationLog, AssociationResult
from pacs_site import audit_dicom

logger = logging.getLogger(__name__)


@dataclass
class AssociationState:
    """What we keep about one incoming association while it runs."""

    id: uuid.UUID
    calling_ae: str
    called_ae: str
    address: str
    port: int | None
    started_at: datetime
    started_monotonic: float = field(default_factory=time.monotonic)
    received: int = 0
    failed: int = 0
    bytes: int = 0
    finished: bool = False
    # SOP Instance UIDs stored, duplicates included (publishing burns what
    # came in this association, also when it was stored before).
    stored: list = field(default_factory=list)


def association_row(state, *, result, reason=""):
    """The *Associations* row of an association (opened, or rejected)."""
    return AssociationLog(
        id=state.id,
        started_at=state.started_at,
        calling_ae=state.calling_ae[:16],
        called_ae=state.called_ae[:16],
        peer_address=state.address[:64],
        peer_port=state.port,
        result=result,
        reason=reason,
    )


def log_rejection(writer, state, text):
    """A rejected association: one line in the log and a row."""
    logger.info("association from %s (%s) to %s rejected: %s", state.calling_ae, state.address, state.called_ae, text)
    state.finished = True
    audit_dicom.association_rejected(state, text)
    row = association_row(state, result=AssociationResult.REJECTED, reason=text)
    row.ended_at = row.started_at
    row.duration = 0.0
    writer.submit(AssociationOpen(row))


def log_close(writer, state, result, reason):
    """An association has ended: its line in the log and its row closed
    with the counts."""
    state.finished = True
    duration = time.monotonic() - state.started_monotonic
    logger.info(
        "association %s %s: %d received, %d failed, %d bytes, %.2f s",
        state.id,
        result.label,
        state.received,
        state.failed,
        state.bytes,
        duration,
    )
    audit_dicom.association_ended(state)  # its audit events follow the close's commit (pacs_site/audit_dicom.py)
    writer.submit(
        AssociationClose(
            state.id,
            dict(
                ended_at=timezone.now(),
                duration=round(duration, 3),
                instances_received=state.received,
                instances_failed=state.failed,
                bytes_received=state.bytes,
                result=result,
                reason=reason,
            ),
            sop_instance_uids=state.stored,
        )
    )


def check_association(called_ae, caller, abstract_syntaxes, *, config):
    """A-ASSOCIATE-RQ, the pure core: None to accept, else the A-ASSOCIATE-RJ
    (result, source, reason) and why.  We answer to our AE title and its
    publishing variants; the caller must be allowed at least one of the
    services it proposes (each request is checked again)."""
    if called_ae not in config.called_ae_titles:
        return REJECT_CALLED_AE, "called AE title not recognised"
    if not config.access.may_associate(caller.ae_title, caller.address, abstract_syntaxes):
        return REJECT_CALLING_AE, "calling AE title not recognised"
    return None


def answer_store(
    raw,
    transfer_syntax_uid,
    *,
    sop_class_uid,
    sop_instance_uid,
    caller,
    called_ae,
    association_id,
    config,
    writer,
    spool=None,
):
    """C-STORE, the pure core: (status, error comment, SOP Instance UID stored).

    The caller must be allowed to store (0124 otherwise); then the bytes are
    stored as received and indexed (`archive.ingest.store_received`: C000
    with the bytes quarantined, A700, 0110 as the README says).  Anyone may
    store by default, so only a known peer replaces a stored instance (the
    overwrite policy), and the index learns whether the sender is known.
    """
    if not config.access.may_store(caller.ae_title, caller.address):
        return Status.NOT_AUTHORISED, f"{caller.ae_title} may not store here", ""
    known = config.access.is_known(caller.ae_title, caller.address)
    result = store_received(
        raw,
        transfer_syntax_uid,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        called_ae=called_ae,
        calling_ae=caller.ae_title,
        association_id=association_id,
        overwrite=config.overwrite and known,
        fsync=config.fsync,
        writer=SenderMarked(writer, from_known_peer=known),
        wait_timeout=max(config.service_timeout, 30),
        max_inflated=config.max_inflated,
        spool=spool,
    )
    return result.status, result.comment, result.sop_instance_uid
