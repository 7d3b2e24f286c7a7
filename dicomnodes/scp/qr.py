"""C-FIND, C-MOVE and C-GET for `runscp`: pure cores and thin pynetdicom adapters.

The cores take plain values and no socket, so the rules are tested without
a network (tests/dicomnodes/test_handlers.py):
- `answer_find(identifier, *, model, caller, config, …)` yields (status,
  dataset) pairs: pending results, then at most one final status;
- `plan_get(…)` / `plan_move(…)` return a `Refusal` or a `Plan` (what to send,
  and for a C-MOVE where).
`QueryRetrieveHandlers` adapts them to pynetdicom's event generators.

Access (documented in README): a caller that may use none of the services it
proposes is rejected at association time as "calling AE title not
recognised" (see AccessPolicy.may_associate); one that may use some gets,
for each request it may not make, status 0124 "Refused: not authorised"
with an Error Comment.
- C-FIND (Q/R and Modality Worklist): a known peer with "may query".
- C-GET: a known peer with "may retrieve with C-GET".
- C-MOVE: a known peer with "may query" or "may retrieve"; the destination
  must be a peer marked "is a C-MOVE destination" (else A801).
C-FIND of an information model that another app owns (Modality Worklist)
goes to the responder that app registered (`dicomnodes.query.registry`).
"""

import logging
from dataclasses import dataclass, field

from pydicom.uid import UID
from pynetdicom import evt

from dicomnodes.dimse import Caller, Status, model_of, status
from dicomnodes.query import matching
from dicomnodes.query.registry import find_responder
from dicomnodes.query.selection import RetrieveError, select_instances
from dicomnodes.scp.compat import NODELAY_HANDLERS, answer_next_response, let_dul_read, send_files_raw
from dicomnodes.scp.sending import contexts_for, dataset_for, decode_budget
from pacs_site import audit_dicom

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    status: int
    comment: str


@dataclass
class Plan:
    targets: list  # query.selection.Target, in sending order
    destination: object = None  # C-MOVE: the Peer to send to
    contexts: list = field(default_factory=list)  # C-MOVE: contexts to propose to it


def _never():
    return False


def answer_find(identifier, *, model, caller: Caller, config, implicit_vr=None, cancelled=_never):
    """C-FIND: yields (status, identifier or None).

    `model` is PATIENT or STUDY (Q/R), or an information model with a
    registered responder (WORKLIST).  `implicit_vr` (True/False/None) is the
    encoding of the accepted transfer syntax, for pre-encoded answers.
    `cancelled()` says whether the peer sent a C-CANCEL.
    """
    if not config.access.may_query(caller.ae_title, caller.address):
        logger.info("C-FIND from %s (%s) refused: not a peer that may query", caller.ae_title, caller.address)
        yield status(Status.NOT_AUTHORISED, f"{caller.ae_title} may not query"), None
        return
    if model not in matching.MODELS:
        responder = find_responder(model)
        if responder is None:
            yield status(Status.UNABLE_TO_PROCESS, f"no {model} information model here"), None
            return
        yield from responder(identifier, caller=caller, config=config, cancelled=cancelled)
        return
    try:
        query = matching.build_query(identifier, model=model, case_insensitive=config.case_insensitive_names)
        for result in matching.iter_results(
            query, limit=config.find_result_limit, retrieve_ae_title=config.ae_title, implicit_vr=implicit_vr
        ):
            if cancelled():
                yield Status.CANCEL, None
                return
            yield Status.PENDING, result
    except matching.QueryError as exc:
        logger.info("C-FIND from %s refused: %s", caller.ae_title, exc)
        yield status(exc.status, exc.message), None


def plan_get(identifier, *, model, caller: Caller, config):
    """C-GET: the instances to send back, or why not."""
    if not config.access.may_get(caller.ae_title, caller.address):
        return Refusal(Status.NOT_AUTHORISED, f"{caller.ae_title} may not retrieve")
    try:
        return Plan(select_instances(identifier, model=model))
    except RetrieveError as exc:
        return Refusal(exc.status, exc.comment)


def plan_move(identifier, *, model, destination_ae, caller: Caller, config):
    """C-MOVE: where to, what, and the contexts to propose; or why not."""
    destination = config.access.move_destination(destination_ae, caller.address)
    if not config.access.may_move(caller.ae_title, caller.address):
        return Refusal(Status.NOT_AUTHORISED, f"{caller.ae_title} may not retrieve")
    if destination is None:
        return Refusal(Status.MOVE_DESTINATION_UNKNOWN, f"Move destination {destination_ae} unknown")
    try:
        targets = select_instances(identifier, model=model)
        return Plan(targets, destination, contexts_for(targets) if targets else [])
    except RetrieveError as exc:
        return Refusal(exc.status, exc.comment)


def _cancel_seen(event):
    """Whether the peer sent a C-CANCEL, once pynetdicom has read what the
    peer sent meanwhile (compat.let_dul_read)."""
    let_dul_read(event.assoc)
    return event.is_cancelled


def _caller(event):
    state = event.assoc.pacs_state
    return Caller(state.calling_ae, state.address)


def _implicit_vr(transfer_syntax):
    """Encoding of pre-encoded answers: known for the uncompressed little endian syntaxes only."""
    syntax = UID(transfer_syntax)
    return syntax.is_implicit_VR if syntax.is_little_endian and not syntax.is_deflated else None


class QueryRetrieveHandlers:
    """pynetdicom adapters of the cores; `config` returns the current ScpConfig."""

    def __init__(self, config):
        self.config = config

    def bindings(self):
        return [
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
        ]

    def on_find(self, event):
        noted = audit_dicom.note_find(
            event.assoc.pacs_state, event.identifier, model=model_of(event.request.AffectedSOPClassUID)
        )
        answers = answer_find(
            event.identifier,
            model=model_of(event.request.AffectedSOPClassUID),
            caller=_caller(event),
            config=self.config(),
            implicit_vr=_implicit_vr(event.context.transfer_syntax),
            cancelled=lambda: _cancel_seen(event),
        )
        try:
            for answer in answers:
                if answer[0] == Status.PENDING and not event.assoc.is_established:
                    return
                if answer[1] is None:
                    audit_dicom.find_answered(noted, int(getattr(answer[0], "Status", answer[0])))
                yield answer
        finally:
            answers.close()

    def on_get(self, event):
        """pynetdicom wants the number of sub-operations first: a refusal
        yields 0 and the response pynetdicom then sends gets our status."""
        caller = _caller(event)
        plan = plan_get(
            event.identifier, model=model_of(event.request.AffectedSOPClassUID), caller=caller, config=self.config()
        )
        audit_dicom.note_retrieve(event.assoc.pacs_state, "get", event.identifier, plan=plan)
        if isinstance(plan, Refusal):
            logger.info("C-GET from %s (%s) refused: %s", caller.ae_title, caller.address, plan.comment)
            answer_next_response(event.assoc, plan.status, plan.comment)
            yield 0
            return
        yield len(plan.targets)
        send_files_raw(event.assoc)
        accepted = event.assoc.accepted_contexts
        budget = decode_budget()
        for target in plan.targets:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield Status.PENDING, dataset_for(target, accepted, max_decoded_bytes=budget)

    def on_move(self, event):
        """pynetdicom wants the destination as the first yield, so a refusal
        yields "no destination" and the response pynetdicom then sends is given
        our status and comment (see compat.answer_next_response)."""
        caller = _caller(event)
        destination_ae = str(event.move_destination).strip()
        plan = plan_move(
            event.identifier,
            model=model_of(event.request.AffectedSOPClassUID),
            destination_ae=destination_ae,
            caller=caller,
            config=self.config(),
        )
        audit_dicom.note_retrieve(
            event.assoc.pacs_state, "move", event.identifier, plan=plan, destination=destination_ae
        )
        if isinstance(plan, Refusal):
            logger.info("C-MOVE from %s (%s) refused: %s", caller.ae_title, caller.address, plan.comment)
            answer_next_response(event.assoc, plan.status, plan.comment)
            yield None, None
            return
        sub = {}

        def remember(ev):
            sub["assoc"] = ev.assoc
            send_files_raw(ev.assoc)

        yield (
            plan.destination.host,
            plan.destination.port,
            {
                "ae_title": destination_ae,
                "contexts": plan.contexts or None,
                "evt_handlers": [(evt.EVT_ESTABLISHED, remember), *NODELAY_HANDLERS],
                "max_pdu": 0,
            },
        )
        yield len(plan.targets)
        budget = decode_budget()
        for target in plan.targets:
            if event.is_cancelled:
                yield Status.CANCEL, None
                return
            yield Status.PENDING, dataset_for(target, sub["assoc"].accepted_contexts, max_decoded_bytes=budget)
