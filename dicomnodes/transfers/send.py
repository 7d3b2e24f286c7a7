"""Send a job's instances to the peer with C-STORE, skipping those already
delivered (a retried job sends only the rest), on our own runtime: stored
files go from their mapping, no copy through Python (`scp.outgoing`)."""

import logging
import time

from dicomnodes.net import ProtocolError
from dicomnodes.net.association import PeerAborted, PeerGone
from dicomnodes.query.levels import instances_at
from dicomnodes.query.selection import RetrieveError, Target
from dicomnodes.scp import outgoing
from dicomnodes.scp.sending import contexts_for
from dicomnodes.transfers.runner import Cancelled, Refused

logger = logging.getLogger(__name__)


def send(run):
    job, p = run.job, run.progress
    rows = list(
        instances_at(job.level, job.uids)
        .order_by("series__series_number", "series_id", "instance_number", "pk")
        .values_list("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "file_size")
    )
    p.total = len(rows)
    delivered = set(p.delivered)
    p.done = sum(1 for row in rows if row[0] in delivered)
    todo = [(Target(*row[:3]), row[3]) for row in rows if row[0] not in delivered]
    if not todo:
        return
    try:
        contexts = contexts_for([t for t, _ in todo])
    except RetrieveError as exc:
        raise Refused(str(exc)) from None
    assoc = run.connect(contexts)
    sender = outgoing.Sender(assoc, budget=run.settings.max_decoded_mb * 2**20)
    message_id = 1
    try:
        for i, (target, size) in enumerate(todo):
            if p.cancelled:
                raise Cancelled()
            asked = time.monotonic()
            upcoming = todo[i + 1][0] if i + 1 < len(todo) else None  # opened while the peer stores this one
            try:
                outcome = sender.send(target, message_id=message_id, upcoming=upcoming)
            except (PeerGone, PeerAborted, ProtocolError) as exc:
                logger.info("transfer job %s: association lost: %s", job.pk, exc)
                run.lost(asked)
            message_id = message_id % 65535 + 1
            if outcome in (outgoing.SUCCESS, outgoing.WARNING):
                p.delivered_one(target.sop_instance_uid, size)
            else:
                logger.warning("transfer job %s: instance %s not delivered", job.pk, target.sop_instance_uid)
                p.failed_one(target.sop_instance_uid)
    finally:
        sender.close()
    run.close()
