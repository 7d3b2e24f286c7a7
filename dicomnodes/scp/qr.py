"""C-FIND, C-MOVE and C-GET for `runscp`: the pure cores.

The cores take plain values and no socket, so the rules are tested without
a network (tests/dicomnodes/test_handlers.py):
- `answer_find(identifier, *, model, caller, config, …)` yields (status,
  dataset) pairs: pending results, then at most one final status;
- `plan_get(…)` / `plan_move(…)` return a `Refusal` or a `Plan` (what to send,
  and for a C-MOVE where).
`acceptor.AcceptorSession` calls them and sends what they say.

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

from dicomnodes.dimse import Caller, Status, status
from dicomnodes.query import answers, matching
from dicomnodes.query.registry import find_responder
from dicomnodes.query.selection import RetrieveError, select_instances
from dicomnodes.scp.sending import contexts_for

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
    registered responder (WORKLIST).  `implicit_vr` (True/False) is the
    encoding of the accepted transfer syntax (little endian): Q/R answers
    then come as the bytes of their identifier (`query.answers`); with None
    as Datasets.  A responder's answers are Datasets.
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
        window = dict(limit=config.find_result_limit, retrieve_ae_title=config.ae_title)
        if implicit_vr is None:
            results = matching.iter_results(query, **window)
        else:
            results = answers.iter_answers(query, implicit_vr=implicit_vr, **window)
        for result in results:
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
