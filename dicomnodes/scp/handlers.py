"""pynetdicom event handlers for `runscp`: association life cycle, C-ECHO, C-STORE.

Handlers get their dependencies (the current configuration, the index
writer) passed in; they stay short and delegate to `answer_store` (the pure
C-STORE core, tested without a socket), `archive.ingest` and `access`.
"""

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone
from pynetdicom import evt

from dicomnodes.archive.index import AssociationClose, AssociationOpen, SenderMarked
from dicomnodes.archive.ingest import store_received
from dicomnodes.archive.spool import SpoolFile
from dicomnodes.dimse import REJECT_CALLED_AE, REJECT_CALLING_AE, REJECT_LOCAL_LIMIT, Caller, Status, status
from dicomnodes.models import AssociationLog, AssociationResult
from pacs_site import audit_dicom
from pacs_site.listeners import peer_address

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


class Handlers:
    """The handlers of one `runscp` process.

    `config` is a callable returning the current ScpConfig (it changes when
    the admin edits the settings); `writer` is the IndexWriter.
    """

    def __init__(self, config, writer, connections=None):
        self.config = config
        self.writer = writer
        self.connections = connections  # limits.ConnectionTable of the server, if any

    def bindings(self):
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
        ]

    # --- association life cycle -------------------------------------------
    def on_requested(self, event):
        """Check the called and calling AE titles before negotiating."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        state = AssociationState(
            id=uuid.uuid4(),
            calling_ae=(rq.calling_ae_title or "").strip(),
            called_ae=(rq.called_ae_title or "").strip(),
            address=peer_address(str(assoc.requestor.address)),
            port=assoc.requestor.port,
            started_at=timezone.now(),
        )
        assoc.pacs_state = state
        config = self.config()
        conn = getattr(assoc, "pacs_connection", None)
        if conn is not None and self.connections is not None:
            busy = self.connections.admit(
                conn,
                max_total=config.max_associations,
                max_per_address=config.max_associations_per_address,
            )
            if busy:
                logger.warning("association from %s (%s) refused for now: %s", state.calling_ae, state.address, busy)
                self._reject(assoc, state, REJECT_LOCAL_LIMIT, f"local limit exceeded: {busy}")
                return
        refusal = check_association(
            state.called_ae,
            Caller(state.calling_ae, state.address),
            [cx.abstract_syntax for cx in rq.presentation_context_definition_list],
            config=config,
        )
        if refusal:
            self._reject(assoc, state, *refusal)
        else:
            # Answer with the title we were called by (ours or a publishing variant).
            assoc.acceptor.ae_title = state.called_ae

    def _reject(self, assoc, state, reason, text):
        assoc.acse.send_reject(*reason)
        # As pynetdicom's own rejection does: wait until the DUL has sent the
        # A-ASSOCIATE-RJ before the socket is closed.
        assoc.kill()
        log_rejection(self.writer, state, text)

    def on_accepted(self, event):
        state = event.assoc.pacs_state
        logger.info(
            "association %s from %s (%s) to %s accepted", state.id, state.calling_ae, state.address, state.called_ae
        )
        self.writer.submit(AssociationOpen(association_row(state, result=AssociationResult.OPEN)))

    def finish(self, assoc):
        """Called once the association thread has ended, whatever the reason."""
        state = getattr(assoc, "pacs_state", None)
        if state is None or state.finished:
            return
        if assoc.is_released:
            result, reason = AssociationResult.RELEASED, ""
        elif assoc.is_aborted:
            result, reason = AssociationResult.ABORTED, "aborted"
        else:
            result, reason = AssociationResult.ABORTED, "connection closed without release"
        log_close(self.writer, state, result, reason)


    # --- services -------------------------------------------------------------
    def on_echo(self, event):
        audit_dicom.note_service(getattr(event.assoc, "pacs_state", None), "echo")
        return Status.SUCCESS

    def on_store(self, event):
        state = event.assoc.pacs_state
        req = event.request
        try:
            with req.DataSet.getbuffer() as raw:  # the received bytes, not a copy of them
                code, comment, sop_instance_uid = self._store(event, state, raw)
                size = len(raw)
        finally:
            if isinstance(req.DataSet, SpoolFile):
                req.DataSet.close()
        if code != Status.NOT_AUTHORISED:  # bytes of refused callers are not counted
            state.bytes += size
        if code != Status.SUCCESS:
            state.failed += 1
            return status(code, comment)
        state.received += 1
        state.stored.append(sop_instance_uid)
        return Status.SUCCESS

    def _store(self, event, state, raw):
        req = event.request
        return answer_store(
            raw,
            str(event.context.transfer_syntax),
            sop_class_uid=str(req.AffectedSOPClassUID),
            sop_instance_uid=str(req.AffectedSOPInstanceUID),
            caller=Caller(state.calling_ae, state.address),
            called_ae=state.called_ae,
            association_id=state.id,
            config=self.config(),
            writer=self.writer,
            spool=req.DataSet if isinstance(req.DataSet, SpoolFile) else None,
        )


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
    """A rejected association: one line in the log and a row (both runtimes)."""
    logger.info("association from %s (%s) to %s rejected: %s", state.calling_ae, state.address, state.called_ae, text)
    state.finished = True
    row = association_row(state, result=AssociationResult.REJECTED, reason=text)
    row.ended_at = row.started_at
    row.duration = 0.0
    writer.submit(AssociationOpen(row))


def log_close(writer, state, result, reason):
    """An association has ended: its line in the log and its row closed
    with the counts (both runtimes)."""
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
