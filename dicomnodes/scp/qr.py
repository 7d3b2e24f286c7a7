"""C-FIND, C-MOVE and C-GET handlers for `runscp` (pynetdicom generators).

Access (documented in README): a caller that may use none of the services it
proposes is rejected at association time as "calling AE title not
recognised" (see AccessPolicy.may_associate); one that may use some gets,
for each request it may not make, status 0124 "Refused: not authorised"
with an Error Comment.
- C-FIND (Q/R and Modality Worklist): a known peer with "may query".
- C-GET: a known peer with "may retrieve with C-GET".
- C-MOVE: a known peer with "may query" or "may retrieve"; the destination
  must be a peer marked "is a C-MOVE destination" (else A801).
"""

import logging

from pydicom.uid import UID
from pynetdicom import evt

from dicomnodes.dimse import model_of, status
from dicomnodes.query import matching
from dicomnodes.scp.compat import NODELAY_HANDLERS
from dicomnodes.scp.sending import RetrieveError, contexts_for, dataset_for, select_instances, send_files_raw

logger = logging.getLogger(__name__)

NOT_AUTHORISED = 0x0124
MOVE_DESTINATION_UNKNOWN = 0xA801
PENDING = 0xFF00
CANCEL = 0xFE00


class QueryRetrieveHandlers:
    """`config` returns the current ScpConfig (see Handlers)."""

    def __init__(self, config):
        self.config = config

    def bindings(self):
        return [
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
        ]

    def on_find(self, event):
        state = event.assoc.pacs_state
        cfg = self.config()
        if not cfg.access.may_query(state.calling_ae, state.address):
            logger.info("C-FIND from %s (%s) refused: not a peer that may query", state.calling_ae, state.address)
            yield status(NOT_AUTHORISED, f"{state.calling_ae} may not query"), None
            return
        model = model_of(event.request.AffectedSOPClassUID)
        if model == "WORKLIST":
            yield from self._find_worklist(event, state, cfg)
            return
        try:
            query = matching.build_query(event.identifier, model=model, case_insensitive=cfg.case_insensitive_names)
            syntax = UID(event.context.transfer_syntax)
            results = matching.iter_results(
                query,
                limit=cfg.find_result_limit,
                retrieve_ae_title=cfg.ae_title,
                implicit_vr=syntax.is_implicit_VR if syntax.is_little_endian and not syntax.is_deflated else None,
            )
            for result in results:
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                if not event.assoc.is_established:
                    return
                yield PENDING, result
        except matching.QueryError as exc:
            logger.info("C-FIND from %s refused: %s", state.calling_ae, exc)
            yield status(exc.status, exc.message), None

    def _find_worklist(self, event, state, cfg):
        """Modality Worklist C-FIND; logged only when the worklist settings say so."""
        from worklist import mwl
        from worklist.models import WorklistQuery, WorklistSettings

        matches, outcome, keys = 0, "0000", ""
        try:
            query = mwl.build_worklist_query(event.identifier, case_insensitive=cfg.case_insensitive_names)
            keys = query.keys
            for result in mwl.iter_worklist_results(query):
                if event.is_cancelled:
                    outcome = "FE00"
                    yield CANCEL, None
                    return
                if not event.assoc.is_established:
                    return
                matches += 1
                yield PENDING, result
        except matching.QueryError as exc:
            outcome = f"{exc.status:04X}"
            yield status(exc.status, exc.message), None
        finally:
            if WorklistSettings.load().message_logging:
                WorklistQuery.objects.create(
                    calling_ae=state.calling_ae[:16],
                    peer_address=state.address[:64],
                    keys=keys,
                    matches=matches,
                    status=outcome,
                )

    def on_get(self, event):
        """pynetdicom wants the number of sub-operations first: a refusal
        yields 0 and the response pynetdicom then sends gets our status."""
        state = event.assoc.pacs_state
        cfg = self.config()
        refusal = None
        if not cfg.access.may_get(state.calling_ae, state.address):
            refusal = (NOT_AUTHORISED, f"{state.calling_ae} may not retrieve")
        else:
            try:
                targets = select_instances(event.identifier, model=model_of(event.request.AffectedSOPClassUID))
            except RetrieveError as exc:
                refusal = (exc.status, exc.comment)
        if refusal:
            logger.info("C-GET from %s (%s) refused: %s", state.calling_ae, state.address, refusal[1])
            _answer_next_response(event.assoc, *refusal)
            yield 0
            return
        yield len(targets)
        send_files_raw(event.assoc)
        accepted = event.assoc.accepted_contexts
        for target in targets:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, dataset_for(target, accepted)

    def on_move(self, event):
        """pynetdicom wants the destination as the first yield, so a refusal
        yields "no destination" and the response pynetdicom then sends is given
        our status and comment (see _answer_next_response)."""
        state = event.assoc.pacs_state
        cfg = self.config()
        destination_ae = str(event.move_destination).strip()
        refusal = None
        destination = cfg.access.move_destination(destination_ae, state.address)
        if not cfg.access.may_move(state.calling_ae, state.address):
            refusal = (NOT_AUTHORISED, f"{state.calling_ae} may not retrieve")
        elif destination is None:
            refusal = (MOVE_DESTINATION_UNKNOWN, f"Move destination {destination_ae} unknown")
        else:
            try:
                targets = select_instances(event.identifier, model=model_of(event.request.AffectedSOPClassUID))
                contexts = contexts_for(targets) if targets else []
            except RetrieveError as exc:
                refusal = (exc.status, exc.comment)
        if refusal:
            logger.info("C-MOVE from %s (%s) refused: %s", state.calling_ae, state.address, refusal[1])
            _answer_next_response(event.assoc, *refusal)
            yield None, None
            return
        sub = {}

        def remember(ev):
            sub["assoc"] = ev.assoc
            send_files_raw(ev.assoc)

        yield (
            destination.host,
            destination.port,
            {
                "ae_title": destination_ae,
                "contexts": contexts or None,
                "evt_handlers": [(evt.EVT_ESTABLISHED, remember), *NODELAY_HANDLERS],
                "max_pdu": 0,
            },
        )
        yield len(targets)
        for target in targets:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, dataset_for(target, sub["assoc"].accepted_contexts)


def _answer_next_response(assoc, code, comment):
    """Give the next DIMSE response pynetdicom sends on this association our
    status and Error Comment (its own answer to "no destination" is a bare
    A801)."""
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive, context_id):
        dimse.send_msg = original
        primitive.Status = code
        primitive.ErrorComment = comment.replace("\\", "/")[:64]
        return original(primitive, context_id)

    dimse.send_msg = send_msg
