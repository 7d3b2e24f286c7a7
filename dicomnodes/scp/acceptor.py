"""runscp's associations on our own runtime (`dicomnodes.net`): negotiation,
then every request in the association's one thread — C-ECHO, C-STORE,
C-FIND (Q/R and worklist), C-MOVE, C-GET, C-CANCEL — through the same pure
cores as before (`handlers.answer_store`, `qr.answer_find`, `qr.plan_get`,
`qr.plan_move`), the same access rules, statuses, Error Comments,
association log and index writer.

A C-STORE's data fragments go to a `StoreSink` as they are read: kept in
memory up to `spool.STREAM_AT` (64 KiB), then written as they come into
the instance's own file (a nameless `SpoolFile` in its folder, beginning
with the file meta group built from the request), which the store path
links under its name: never a whole-data-set copy in memory, and the file
written while the data set arrives.  C-GET and C-MOVE sub-operations send stored files
from the mapped files, in PDVs of the peer's maximum length (`outgoing.py`).
"""

import functools
import io
import logging
import uuid

from django.utils import timezone
from pydicom.uid import UID
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.presentation import build_context

from dicomnodes.archive.index import AssociationOpen
from dicomnodes.archive.storage import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnodes.dimse import QUERY_RETRIEVE, REJECT_LOCAL_LIMIT, VERIFICATION, Caller, Status, model_of, service_of
from dicomnodes.models import AssociationResult
from dicomnodes.net import UNEXPECTED_PDU, ProtocolError, negotiation
from dicomnodes.net import commandset as cs
from dicomnodes.net.association import RELEASE, Association, Link, PeerAborted, PeerGone
from dicomnodes.net.outbox import Outbox
from dicomnodes.net.pdata import A_ASSOCIATE_RQ, abort_pdu
from dicomnodes.scp import outgoing
from dicomnodes.scp.handlers import (
    AssociationState,
    answer_store,
    association_row,
    check_association,
    log_close,
    log_rejection,
)
from dicomnodes.scp.qr import Refusal, answer_find, plan_get, plan_move
from dicomnodes.scp.sending import UNCOMPRESSED, decode_budget
from dicomnodes.scp.sinks import IdentifierSink, StoreSink, request_placement
from pacs_site import audit_dicom
from pacs_site.listeners import peer_address

logger = logging.getLogger(__name__)

MAXIMUM_PDU_RECEIVED = 2**20  # what we ask peers to send at most (bigger gains nothing: bench/ingest.py)

# Verification in any syntax; the Q/R and worklist classes in little endian
# (identifiers are decoded by pydicom); storage classes: any, in the first
# syntax proposed (negotiate_unrestricted), since we store bytes as received.
SUPPORTED = [build_context(VERIFICATION)] + [build_context(uid, UNCOMPRESSED) for uid in QUERY_RETRIEVE]
# The Verification context accepts every transfer syntax pynetdicom knows.
SUPPORTED[0] = build_context(
    VERIFICATION,
    UNCOMPRESSED + ["1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"],
)


MAX_PIPELINED = 16  # requests whose data set arrived before their turn


# A modality sends the same A-ASSOCIATE-RQ on every association, and what we
# make of it depends only on its bytes (AE titles included) and constants:
# pynetdicom's decoding and negotiation of storescu's 120 contexts cost 15-40
# ms of Python a time (65 ms under load), a cache hit a dictionary look-up.
# What these return is shared: read, never changed.  Who may associate is
# checked on every association, apart.


@functools.lru_cache(maxsize=16)
def _decode_request(body: bytes):
    return negotiation.decode_request(body)


@functools.lru_cache(maxsize=16)
def _accept(body: bytes):
    return negotiation.accept(
        _decode_request(body),
        supported=SUPPORTED,
        max_pdu_received=MAXIMUM_PDU_RECEIVED,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )


class Refused(Exception):
    """The association is rejected (A-ASSOCIATE-RJ already sent)."""


class AcceptorSession:
    """One incoming association, from its A-ASSOCIATE-RQ to its end."""

    def __init__(self, sock, conn, *, config, writer, connections, tls=None):
        self.sock = sock
        self.tls = tls  # an SSLContext: the connection came to the TLS port
        self.conn = conn
        self.config = config()  # the ScpConfig at association time
        self.writer = writer
        self.connections = connections
        self.state = None
        self.assoc = None
        self.sinks = {}  # message ID -> sink of the data set under way
        self.outcome = (AssociationResult.ABORTED, "connection closed without release")

    # --- life cycle ----------------------------------------------------------------

    def run(self):
        cfg = self.config
        if self.tls is not None and not self._handshake():
            return
        link = Link(self.sock, timeout=cfg.service_timeout, max_read=2 * MAXIMUM_PDU_RECEIVED, debug=cfg.debug)
        try:
            self._associate(link)
            self._serve()
        except Refused:
            return
        except PeerAborted as exc:
            self.outcome = (AssociationResult.ABORTED, "aborted")
            logger.info("association %s: %s", self._name(), exc)
        except PeerGone as exc:
            if self.state is not None:
                logger.info("association %s ended: %s", self._name(), exc)
        except ProtocolError as exc:
            logger.warning("association %s aborted: %s", self._name(), exc.reason)
            self.outcome = (AssociationResult.ABORTED, f"aborted: {exc.reason}"[:200])
            try:
                link.send(abort_pdu(reason=exc.abort_reason))
            except PeerGone:
                pass
        finally:
            for sink in self.sinks.values():
                sink.close()
            self.sinks.clear()
            link.close()
            self._finish()

    def _handshake(self):
        """TLS first (within the service time-out); False: closed, logged."""
        try:
            self.sock.settimeout(self.config.service_timeout)
            self.sock = self.tls.wrap_socket(self.sock, server_side=True)
            return True
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            address = self.conn.address if self.conn is not None else "?"
            logger.warning("TLS connection from %s refused: %s", address, exc)
            try:
                self.sock.close()
            except OSError:
                pass
            return False

    def _name(self):
        if self.state is None:
            return f"from {self.conn.address}"
        return f"{self.state.id} from {self.state.calling_ae} ({self.state.address})"

    def _associate(self, link):
        cfg = self.config
        pdu_type, body = link.read_pdu()
        if pdu_type != A_ASSOCIATE_RQ:
            raise ProtocolError(f"PDU type 0x{pdu_type:02X} before an A-ASSOCIATE-RQ", abort_reason=UNEXPECTED_PDU)
        try:
            body = bytes(body)
            request = _decode_request(body)
        except negotiation.MustReject as exc:  # PS3.8 answers these with A-ASSOCIATE-RJ, not A-ABORT
            logger.info("association from %s rejected: %s", self.conn.address if self.conn else "?", exc.reason)
            try:
                link.send(negotiation.reject(*exc.rejection))
            except PeerGone:
                pass
            raise Refused() from None
        if cfg.debug:
            logger.debug(
                "A-ASSOCIATE-RQ from %s to %s: max PDU %d, implementation %s %s, contexts %s",
                request.calling_ae,
                request.called_ae,
                request.max_pdu,
                request.implementation_class_uid,
                request.implementation_version_name,
                [
                    (cx.context_id, str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
                    for cx in request.primitive.presentation_context_definition_list
                ],
            )
        address, port = _peer(self.sock, self.conn)
        self.state = state = AssociationState(
            id=uuid.uuid4(),
            calling_ae=request.calling_ae,
            called_ae=request.called_ae,
            address=address,
            port=port,
            started_at=timezone.now(),
        )
        if self.connections is not None and self.conn is not None:
            busy = self.connections.admit(
                self.conn, max_total=cfg.max_associations, max_per_address=cfg.max_associations_per_address
            )
            if busy:
                logger.warning("association from %s (%s) refused for now: %s", state.calling_ae, state.address, busy)
                self._reject(link, REJECT_LOCAL_LIMIT, f"local limit exceeded: {busy}")
        proposed = [str(cx.abstract_syntax) for cx in request.primitive.presentation_context_definition_list]
        refusal = check_association(state.called_ae, Caller(state.calling_ae, state.address), proposed, config=cfg)
        if refusal:
            self._reject(link, *refusal)
        accepted = _accept(body)
        if cfg.debug:
            logger.debug(
                "A-ASSOCIATE-AC: contexts %s",
                [(cx.id, cx.abstract_syntax, cx.transfer_syntax) for cx in accepted.contexts.values()],
            )
        link.send(accepted.pdu)
        self.assoc = Association(
            link, contexts=dict(accepted.contexts), peer_max_pdu=request.max_pdu, open_sink=self._open_sink
        )
        logger.info(
            "association %s from %s (%s) to %s accepted", state.id, state.calling_ae, state.address, state.called_ae
        )
        self.writer.submit(AssociationOpen(association_row(state, result=AssociationResult.OPEN)))

    def _reject(self, link, reason, text):
        try:
            link.send(negotiation.reject(*reason))
        except PeerGone:
            pass
        log_rejection(self.writer, self.state, text)
        raise Refused()

    def _finish(self):
        if self.state is not None and not self.state.finished:
            log_close(self.writer, self.state, *self.outcome)

    # --- the data phase ------------------------------------------------------------

    def _serve(self):
        assoc = self.assoc
        while True:
            message = assoc.next_message(idle=self.config.service_timeout)
            if message is RELEASE:
                assoc.release_reply()
                self.outcome = (AssociationResult.RELEASED, "")
                return
            self._dispatch(message)

    def _open_sink(self, assoc, context_id, command):
        if context_id not in assoc.contexts:
            raise ProtocolError(f"presentation context {context_id} was not accepted")
        if command.MessageID in self.sinks or len(self.sinks) >= MAX_PIPELINED:
            # Requests are answered one at a time; a peer that runs ahead
            # (two C-STOREs in one PDU) is fine, one that never waits is not.
            raise ProtocolError(f"message ID {command.MessageID} reused, or too many requests ahead of their answers")
        if command.CommandField == cs.C_STORE_RQ:
            caller = self._caller()
            discard = not self.config.access.may_store(caller.ae_title, caller.address)
            where = request_placement(
                command, assoc.contexts[context_id], calling_ae=self.state.calling_ae, called_ae=self.state.called_ae
            )
            sink = StoreSink(discard=discard, placement=where, writeback=self.config.fsync)
        else:
            sink = IdentifierSink()
        self.sinks[command.MessageID] = sink
        return sink

    def _dispatch(self, message):
        command = message.command
        field = command.CommandField
        context = self.assoc.contexts.get(message.context_id)
        if context is None:
            raise ProtocolError(f"presentation context {message.context_id} was not accepted")
        sink = self.sinks.pop(command.MessageID, None)
        try:
            if field == cs.C_ECHO_RQ:
                audit_dicom.note_service(self.state, "echo")
                self._respond(message, cs.C_ECHO_RSP, context.abstract_syntax, Status.SUCCESS)
            elif field == cs.C_STORE_RQ:
                self._store(message, context, sink)
            elif field == cs.C_FIND_RQ:
                self._find(message, context, sink)
            elif field == cs.C_GET_RQ:
                self._get(message, context, sink)
            elif field == cs.C_MOVE_RQ:
                self._move(message, context, sink)
            elif field == cs.C_CANCEL_RQ:
                pass  # a C-CANCEL for a request already answered: nothing to do (PS3.7 9.3.2.3)
            else:
                raise ProtocolError(f"DIMSE command 0x{field:04X} not supported here")
        finally:
            if sink is not None:
                sink.close()

    def _respond(self, message, field, sop_class, code, comment=None, **kwargs):
        rsp = cs.response_template(field, sop_class).render(
            message.command.MessageID, int(code), error_comment=comment, **kwargs
        )
        self.assoc.send_command(message.context_id, rsp)

    def _caller(self):
        return Caller(self.state.calling_ae, self.state.address)

    # --- C-STORE -----------------------------------------------------------------------

    def _store(self, message, context, sink):
        command = message.command
        state = self.state
        sop_class = command.AffectedSOPClassUID or ""
        sop_instance = command.AffectedSOPInstanceUID or ""
        if sink is None:  # a C-STORE-RQ without a data set
            raise ProtocolError("C-STORE-RQ without a data set")
        if sop_class != context.abstract_syntax or service_of(sop_class) != "store":
            # PS3.4 B.2.3: refused, SOP class not supported (on this context).
            code, comment, stored = Status.SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} not the context's", ""
        elif sink.finish():  # refused: the disk guard or a failed write, while the data set was spooled
            code, comment, stored = Status.OUT_OF_RESOURCES, sink.refused, ""
        elif sink.discard:
            code, comment, stored = Status.NOT_AUTHORISED, f"{state.calling_ae} may not store here", ""
        else:
            with sink.contents() as (raw, spool):
                code, comment, stored = self._answer_store(raw, context, sop_class, sop_instance, spool)
        if code != Status.NOT_AUTHORISED:
            state.bytes += sink.size
        if code == Status.SUCCESS:
            state.received += 1
            state.stored.append(stored)
        else:
            state.failed += 1
        self._respond(
            message,
            cs.C_STORE_RSP,
            sop_class,
            code,
            comment if code != Status.SUCCESS else None,
            instance_uid=sop_instance,
        )

    def _answer_store(self, raw, context, sop_class, sop_instance, spool):
        state = self.state
        return answer_store(
            raw,
            context.transfer_syntax,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            caller=self._caller(),
            called_ae=state.called_ae,
            association_id=state.id,
            config=self.config,
            writer=self.writer,
            spool=spool,
        )

    # --- C-FIND ------------------------------------------------------------------------

    def _identifier(self, context, sink):
        syntax = UID(context.transfer_syntax)
        if sink is None:
            raise ProtocolError("a query/retrieve request without an identifier")
        return decode_dataset(io.BytesIO(bytes(sink.data)), syntax.is_implicit_VR, syntax.is_little_endian)

    def _find(self, message, context, sink):
        """Answers go out 32 to a sendmsg (net.outbox); a C-CANCEL is looked
        for after each send (a read of the socket per answer cost more than
        the answer) and the answers stop at the next one."""
        syntax = UID(context.transfer_syntax)
        sop_class = context.abstract_syntax
        message_id = message.command.MessageID
        try:
            identifier = self._identifier(context, sink)
        except Exception as exc:  # pydicom on a malformed identifier
            self._respond(message, cs.C_FIND_RSP, sop_class, Status.UNABLE_TO_PROCESS, f"Cannot read identifier: {exc}")
            return
        cancelled = {"seen": False}
        outbox = Outbox(self.assoc)
        pending = cs.response_template(cs.C_FIND_RSP, sop_class)

        noted = audit_dicom.note_find(self.state, identifier, model=model_of(sop_class))
        answers = answer_find(
            identifier,
            model=model_of(sop_class),
            caller=self._caller(),
            config=self.config,
            implicit_vr=syntax.is_implicit_VR,
            cancelled=lambda: cancelled["seen"],
        )
        try:
            for code, result in answers:
                code, comment = _status(code)
                if code in (Status.PENDING, Status.PENDING_WARNING) and result is not None:
                    if not isinstance(result, bytes):  # a Dataset (Modality Worklist)
                        result = encode_dataset(result, syntax.is_implicit_VR, syntax.is_little_endian)
                    if result is None:
                        code, comment = Status.UNABLE_TO_PROCESS, "Cannot encode an answer"
                    else:
                        rsp = pending.render(message_id, int(code), error_comment=comment, data_set_follows=True)
                        if outbox.add(message.context_id, rsp, result) and self.assoc.message_waiting():
                            cancelled["seen"] = self._read_cancel(message_id)
                        continue
                outbox.flush()
                audit_dicom.find_answered(noted, code, comment)
                self._respond(message, cs.C_FIND_RSP, sop_class, code, comment)
                return
        finally:
            answers.close()
        outbox.flush()
        self._respond(message, cs.C_FIND_RSP, sop_class, Status.SUCCESS)

    def _read_cancel(self, message_id):
        """Read what the peer sent during an operation: True for a C-CANCEL
        of `message_id`.  Anything else but a C-CANCEL ends the association
        (no asynchronous operations are negotiated)."""
        while self.assoc.message_waiting():
            message = self.assoc.next_message()
            if message is RELEASE:
                raise ProtocolError("A-RELEASE-RQ while a request was being answered", abort_reason=UNEXPECTED_PDU)
            if message.command.CommandField != cs.C_CANCEL_RQ:
                raise ProtocolError("a second request while one is being answered", abort_reason=UNEXPECTED_PDU)
            if message.command.MessageIDBeingRespondedTo == message_id:
                logger.info("association %s: C-CANCEL of message %d", self._name(), message_id)
                return True
        return False

    # --- C-GET and C-MOVE -------------------------------------------------------------

    def _get(self, message, context, sink):
        sop_class = context.abstract_syntax
        caller = self._caller()
        try:
            identifier = self._identifier(context, sink)
        except Exception as exc:
            self._respond(message, cs.C_GET_RSP, sop_class, Status.UNABLE_TO_PROCESS, f"Cannot read identifier: {exc}")
            return
        plan = plan_get(identifier, model=model_of(sop_class), caller=caller, config=self.config)
        audit_dicom.note_retrieve(self.state, "get", identifier, plan=plan)
        if isinstance(plan, Refusal):
            logger.info("C-GET from %s (%s) refused: %s", caller.ae_title, caller.address, plan.comment)
            self._respond(message, cs.C_GET_RSP, sop_class, plan.status, plan.comment, **_counts(0, 0, 0, 0))
            return
        sender = outgoing.Sender(self.assoc, budget=decode_budget())
        self._sub_operations(message, context, cs.C_GET_RSP, plan.targets, sender, first_message_id=None)

    def _move(self, message, context, sink):
        sop_class = context.abstract_syntax
        caller = self._caller()
        destination_ae = (message.command.MoveDestination or "").strip()
        try:
            identifier = self._identifier(context, sink)
        except Exception as exc:
            self._respond(message, cs.C_MOVE_RSP, sop_class, Status.UNABLE_TO_PROCESS, f"Cannot read identifier: {exc}")
            return
        plan = plan_move(
            identifier, model=model_of(sop_class), destination_ae=destination_ae, caller=caller, config=self.config
        )
        audit_dicom.note_retrieve(self.state, "move", identifier, plan=plan, destination=destination_ae)
        if isinstance(plan, Refusal):
            logger.info("C-MOVE from %s (%s) refused: %s", caller.ae_title, caller.address, plan.comment)
            self._respond(message, cs.C_MOVE_RSP, sop_class, plan.status, plan.comment)
            return
        if not plan.targets:
            self._respond(message, cs.C_MOVE_RSP, sop_class, Status.SUCCESS, **_counts(None, 0, 0, 0))
            return
        try:
            sub = outgoing.connect(
                plan.destination.host,
                plan.destination.port,
                calling_ae=self.config.ae_title,
                called_ae=destination_ae,
                contexts=plan.contexts,
                timeout=self.config.service_timeout,
            )
        except outgoing.CannotConnect as exc:
            logger.warning("C-MOVE from %s: cannot reach %s: %s", caller.ae_title, destination_ae, exc)
            self._respond(message, cs.C_MOVE_RSP, sop_class, Status.MOVE_DESTINATION_UNKNOWN, str(exc)[:64])
            return
        try:
            sender = outgoing.Sender(
                sub, budget=decode_budget(), move_originator=(self.state.calling_ae, message.command.MessageID)
            )
            self._sub_operations(message, context, cs.C_MOVE_RSP, plan.targets, sender, first_message_id=1)
        finally:
            outgoing.finish(sub)

    def _sub_operations(self, message, context, field, targets, sender, *, first_message_id):
        """Send each target (C-STORE sub-operations), a pending response after
        each but the last, then the final one (PS3.4 C.4.2.3, C.4.3.3; as
        pynetdicom did).  A C-MOVE's pending response for sub-operation k-1
        goes to the caller while the destination stores k (`Sender.send`'s
        `meanwhile`: its own association); a C-GET's follows each response
        on the one association, so the caller never sees a C-GET-RSP between
        a C-STORE-RQ and its answer."""
        sop_class = context.abstract_syntax
        message_id = message.command.MessageID
        remaining, completed, failed, warning = len(targets), 0, 0, 0
        failed_uids = []
        next_id = first_message_id if first_message_id is not None else message_id + 1
        is_move = field == cs.C_MOVE_RSP
        caller_lost = []  # what the caller's association raised in `meanwhile`
        due = None  # the counts of a pending response not yet sent

        def send_pending():
            nonlocal due
            counts, due = due, None
            self._respond(message, field, sop_class, Status.PENDING, **counts)

        def send_pending_meanwhile():
            # Inside Sender.send: the caller's association failing must not
            # pass for the destination's; raised once the send returns.
            try:
                send_pending()
            except Exception as exc:
                caller_lost.append(exc)

        try:
            for i, target in enumerate(targets):
                # A C-CANCEL is read here between sub-operations, or (C-GET, on
                # this same association) by the sender while it awaits a response.
                if message_id in sender.cancels or (self.assoc.message_waiting() and self._read_cancel(message_id)):
                    self._final(
                        message, field, sop_class, Status.CANCEL, failed_uids, remaining, completed, failed, warning
                    )
                    return
                upcoming = targets[i + 1] if i + 1 < len(targets) else None
                meanwhile = send_pending_meanwhile if is_move and due is not None else None
                outcome = sender.send(target, message_id=next_id, meanwhile=meanwhile, upcoming=upcoming)
                if caller_lost:
                    raise caller_lost[0]
                if due is not None:
                    send_pending()  # this sub-operation failed before it reached the destination
                next_id = next_id + 1 if next_id < 65535 else 1
                remaining -= 1
                if outcome == outgoing.SUCCESS:
                    completed += 1
                elif outcome == outgoing.WARNING:
                    warning += 1
                else:
                    failed += 1
                    failed_uids.append(target.sop_instance_uid)
                if remaining:
                    due = _counts(remaining, completed, failed, warning)
                    if not is_move:
                        send_pending()
        finally:
            sender.close()
        if not failed and not warning:
            code = Status.SUCCESS
        elif failed == len(targets):
            code = 0xA702  # unable to perform sub-operations
        else:
            code = Status.SUB_OPERATIONS_FAILED
        self._final(message, field, sop_class, code, failed_uids, None, completed, failed, warning)

    def _final(self, message, field, sop_class, code, failed_uids, remaining, completed, failed, warning):
        counts = _counts(remaining, completed, failed, warning)
        if code == Status.SUCCESS and not failed_uids:
            self._respond(message, field, sop_class, code, **counts)
            return
        syntax = UID(self.assoc.contexts[message.context_id].transfer_syntax)
        data = outgoing.failed_list(failed_uids, syntax)
        self._respond(message, field, sop_class, code, data_set_follows=True, **counts)
        self.assoc.send_data(message.context_id, data)


def _counts(remaining, completed, failed, warning):
    return {"remaining": remaining, "completed": completed, "failed": failed, "warning": warning}


def _status(value):
    """(code, Error Comment) of what the cores yield: an int or a status Dataset."""
    if isinstance(value, int):
        return value, None
    return int(value.Status), value.get("ErrorComment")


def _peer(sock, conn):
    if conn is not None:
        try:
            return conn.address, sock.getpeername()[1]
        except OSError:
            return conn.address, None
    try:
        host, port = sock.getpeername()[:2]
        return peer_address(str(host)), port
    except OSError:
        return "", None
