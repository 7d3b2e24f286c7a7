"""Send a job's instances to the peer with C-STORE, skipping those already
delivered (a retried job sends only the rest)."""

import logging
import time

from pynetdicom import AE
from pynetdicom.status import code_to_category

from dicomnodes.dimse import Status
from dicomnodes.query.levels import instances_at
from dicomnodes.query.selection import RetrieveError, Target
from dicomnodes.scp.compat import send_files_raw
from dicomnodes.scp.sending import contexts_for, dataset_for
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
    ae = AE(ae_title=run.ae_title)
    try:
        ae.requested_contexts = contexts_for([t for t, _ in todo])
    except RetrieveError as exc:
        raise Refused(str(exc)) from None
    assoc = run.associate(ae)
    send_files_raw(assoc)
    budget = run.settings.max_decoded_mb * 2**20
    for target, size in todo:
        if p.cancelled:
            raise Cancelled()
        ds = dataset_for(target, assoc.accepted_contexts, max_decoded_bytes=budget)
        asked = time.monotonic()
        try:
            answer = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted context for this SOP class / syntax
            logger.warning("transfer job %s: instance not sent: %s", job.pk, exc)
            p.failed_one(target.sop_instance_uid)
            continue
        except RuntimeError:  # the association is gone (aborted by the monitor or the peer)
            run.lost(asked)
        if not answer or "Status" not in answer:
            run.lost(asked)
        code = answer.Status
        if code == Status.SUCCESS or code_to_category(code) == "Warning":
            p.delivered_one(target.sop_instance_uid, size)
        else:
            logger.warning("transfer job %s: the peer refused an instance: status 0x%04X", job.pk, code)
            p.failed_one(target.sop_instance_uid)
    run.close()
