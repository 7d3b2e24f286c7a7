"""One transfer job over the network: C-STORE to a peer (here), or C-MOVE /
C-GET from it (`transfer_retrieve.py`).  `run_job()` is called by `transfers.run_next()` in a thread of its
own, with the job already claimed (state RUNNING).

1. A monitor thread writes progress and a heartbeat to the job's row every
   second and reads its "cancel requested" flag; when it is set, the
   association is aborted (also in the middle of a DIMSE wait).
2. The service time-out bounds the connection, the association negotiation
   and every DIMSE wait (pynetdicom's four time-outs); on expiry pynetdicom
   aborts the association and the job records "peer did not answer within N s".
3. Outcomes: every instance done -> succeeded; some refused by the peer ->
   partly failed (or failed, when none went); a network failure -> back to
   the queue after the next retry delay, or failed when the delays are used
   up; a refusal by the peer (association rejected permanently, a failure
   status) -> failed at once, since trying again changes nothing.
4. Nothing is transferred twice: a send skips the instances recorded as
   delivered; a retried retrieve first asks the peer (C-FIND, IMAGE level)
   what the scope holds and retrieves only the instances not stored here.
"""

import logging
import socket
import threading
import time
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone
from pynetdicom import AE, evt
from pynetdicom.status import code_to_category

from dicomnodes.models import (
    DicomServerSettings,
    TransferJob,
    TransferKind,
    TransferState,
)
from dicomnodes.scp.compat import NODELAY_HANDLERS, leave_responses_to_callers
from dicomnodes.scp.sending import RetrieveError, Target, contexts_for, dataset_for, send_files_raw
from dicomnodes.transfers.echo import why_not_established
from dicomnodes.transfers.jobs import instances_for, retry_delay

logger = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
_TIMEOUTS = ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout")
_TRANSIENT = 2  # A-ASSOCIATE-RJ result: rejected-transient


class Stop(Exception):
    """Why a job ended early."""


class NetworkFailure(Stop):
    """Tried again later: the peer may be back."""


class Refused(Stop):
    """Failed for good: the peer said no."""


class Cancelled(Stop):
    pass


@dataclass
class Progress:
    total: int | None = None
    done: int = 0
    failed: int = 0
    bytes: int = 0
    delivered: list = field(default_factory=list)
    failed_uids: list = field(default_factory=list)
    done_here: int = 0
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered_one(self, uid, size):
        with self.lock:
            self.done += 1
            self.done_here += 1
            self.bytes += size
            self.delivered.append(uid)

    def failed_one(self, uid):
        with self.lock:
            self.failed += 1
            self.failed_uids.append(uid)

    def row_values(self, *, with_uids=True):
        """The job row's progress columns; the UID lists (which grow with
        the job) only when `with_uids`."""
        with self.lock:
            elapsed = time.monotonic() - self.started
            values = dict(
                total=self.total,
                done=self.done,
                failed=self.failed,
                bytes=self.bytes,
                rate=round(self.done_here / elapsed, 2) if elapsed > 0.5 and self.done_here else None,
            )
            if with_uids:
                values.update(delivered=list(self.delivered), failed_uids=list(self.failed_uids)[-1000:])
            return values


class Monitor(threading.Thread):
    """Progress and heartbeat to the row, the cancel flag from it, every second."""

    def __init__(self, run):
        super().__init__(name=f"transfer-monitor-{run.job.pk}", daemon=True)
        self.run_ = run
        self.stopping = threading.Event()

    def run(self):
        try:
            ticks = 0
            while not self.stopping.wait(1.0):
                # The delivered list (what a retry leaves out) every 5 s: a
                # worker that dies may resend up to 5 s of instances, and a
                # job of 10,000 instances does not rewrite 600 KB a second.
                ticks += 1
                self.run_.save_progress(with_uids=ticks % 5 == 0)
                if TransferJob.objects.filter(pk=self.run_.job.pk, cancel_requested=True).exists():
                    self.run_.cancel()
        except Exception:
            logger.exception("transfer job %s: the monitor failed", self.run_.job.pk)
        finally:
            connection.close()

    def stop(self):
        self.stopping.set()
        self.join(5)


class JobRun:
    def __init__(self, job):
        self.job = job
        self.peer = job.peer
        self.settings = DicomServerSettings.load()
        self.timeout = self.settings.service_timeout
        self.progress = Progress(delivered=list(job.delivered or []))
        self.progress.done = len(self.progress.delivered)
        self.progress.total = job.total
        self.assoc = None

    # --- the row --------------------------------------------------------------------
    def save_progress(self, *, with_uids=True, **extra):
        TransferJob.objects.filter(pk=self.job.pk).update(
            heartbeat_at=timezone.now(),
            updated_at=timezone.now(),
            **self.progress.row_values(with_uids=with_uids),
            **extra,
        )

    def cancel(self):
        if not self.progress.cancelled:
            logger.info("transfer job %s: cancelled, aborting the association", self.job.pk)
        self.progress.cancelled = True
        assoc = self.assoc
        if assoc is not None and assoc.is_established:
            assoc.abort()
            # pynetdicom's DIMSE wait does not end with the association: it
            # would sit out the time-out.  An empty message wakes it now.
            assoc.dimse.msg_queue.put((None, None))

    # --- the association --------------------------------------------------------------
    def associate(self, ae, *, handlers=(), ext_neg=None):
        for name in _TIMEOUTS:
            setattr(ae, name, self.timeout)
        ae.maximum_pdu_size = 0
        connected = threading.Event()
        started = time.monotonic()
        if self.progress.cancelled:
            raise Cancelled()
        try:
            assoc = ae.associate(
                self.peer.host,
                self.peer.port,
                ae_title=self.peer.ae_title,
                ext_neg=ext_neg,
                evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.set()), *NODELAY_HANDLERS, *handlers],
            )
        except socket.gaierror as exc:
            raise NetworkFailure(f"host {self.peer.host} unknown ({exc.strerror or exc})") from None
        self.assoc = assoc
        leave_responses_to_callers(assoc)  # also done at EVT_ESTABLISHED; this closes the gap before it
        if not assoc.is_established:
            if self.progress.cancelled:
                raise Cancelled()
            text = why_not_established(
                assoc, connected, started, self.peer.host, self.peer.port, self.peer.ae_title, self.timeout
            )
            answer = assoc.acceptor.primitive
            if assoc.is_rejected and answer is not None and answer.result != _TRANSIENT:
                raise Refused(text)
            raise NetworkFailure(text)
        return assoc

    def lost(self, asked_at):
        """An empty response: cancelled by us, timed out, or aborted by the peer."""
        if self.progress.cancelled:
            raise Cancelled()
        if time.monotonic() - asked_at >= self.timeout * 0.9:
            raise NetworkFailure(f"peer did not answer within {self.timeout:g} s")
        raise NetworkFailure("the peer aborted the association or closed the connection")

    def close(self):
        assoc, self.assoc = self.assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()
            if assoc.is_established:  # no A-RELEASE-RP within the time-out
                assoc.abort()

    def abort(self):
        assoc, self.assoc = self.assoc, None
        if assoc is not None and assoc.is_established:
            assoc.abort()


def run_job(job):
    """Run a claimed job to its end state (see the module docstring)."""
    run = JobRun(job)
    monitor = Monitor(run)
    monitor.start()
    from dicomnodes.transfers.retrieve import get, move, studies_retrieved

    kind = {TransferKind.SEND: send, TransferKind.MOVE: move, TransferKind.GET: get}[job.kind]
    logger.info("transfer job %s: attempt %d: %s", job.pk, job.attempts, job.description)
    error, state, next_attempt = "", None, None
    try:
        kind(run)
        p = run.progress
        if job.kind != TransferKind.SEND and not p.total and not p.done and not p.failed:
            raise Refused(f"{run.peer.ae_title} found nothing to retrieve for this job")
        if p.failed:
            state = TransferState.PARTLY_FAILED if p.done else TransferState.FAILED
            error = f"{p.failed} instances were not accepted"
        else:
            state = TransferState.SUCCEEDED
    except Cancelled:
        state, error = TransferState.CANCELLED, "cancelled while running"
    except NetworkFailure as exc:
        error = str(exc)
        delay = retry_delay(job.attempts)
        if delay is None:
            state = TransferState.FAILED
            if job.attempts > 1:
                error += f" (gave up after {job.attempts} attempts)"
        else:
            state, next_attempt = TransferState.QUEUED, timezone.now() + delay
    except Refused as exc:
        state, error = TransferState.FAILED, str(exc)
    finally:
        run.abort()
        monitor.stop()
    extra = dict(state=state, last_error=error, cancel_requested=False)
    if next_attempt:
        extra["next_attempt_at"] = next_attempt
    else:
        extra["finished_at"] = timezone.now()
    run.save_progress(**extra)
    logger.info("transfer job %s: %s%s", job.pk, TransferState(state).label, f" ({error})" if error else "")
    if state in (TransferState.SUCCEEDED, TransferState.PARTLY_FAILED) and job.kind != TransferKind.SEND:
        studies_retrieved(run)
    return state


# --- C-STORE to the peer ------------------------------------------------------------------


def send(run):
    job, p = run.job, run.progress
    rows = list(
        instances_for(job.level, job.uids)
        .order_by("series__series_number", "series_id", "instance_number", "pk")
        .values_list("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "file_size")
    )
    p.total = len(rows)
    delivered = set(p.delivered)
    p.done = sum(1 for row in rows if row[0] in delivered)
    todo = [(Target(*row[:3]), row[3]) for row in rows if row[0] not in delivered]
    if not todo:
        return
    ae = AE(ae_title=run.settings.ae_title)
    try:
        ae.requested_contexts = contexts_for([t for t, _ in todo])
    except RetrieveError as exc:
        raise Refused(str(exc)) from None
    assoc = run.associate(ae)
    send_files_raw(assoc)
    for target, size in todo:
        if p.cancelled:
            raise Cancelled()
        ds = dataset_for(target, assoc.accepted_contexts)
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
        if code == 0x0000 or code_to_category(code) == "Warning":
            p.delivered_one(target.sop_instance_uid, size)
        else:
            logger.warning("transfer job %s: the peer refused an instance: status 0x%04X", job.pk, code)
            p.failed_one(target.sop_instance_uid)
    run.close()
