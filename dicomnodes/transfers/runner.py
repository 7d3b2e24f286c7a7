"""One transfer job over the network: the state of its run (`JobRun`: the
association, progress, cancel), its monitor thread, and why it stopped.
`jobs.run_job()` runs a claimed job (state RUNNING) in a process of its own
(`processes`) with `send.send` (C-STORE to the peer) or `retrieve.move`/`retrieve.get`.

1. A monitor thread writes progress and a heartbeat to the job's row every
   second and reads its "cancel requested" flag; when it is set, the
   association is aborted (also in the middle of a DIMSE wait).
2. The associations are ours (`scp.outgoing.connect`, `scp.requesting`):
   the service time-out bounds the connection, the association negotiation
   and every wait for a PDU; on expiry the job records "peer did not answer
   within N s".
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
import threading
import time
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone

from dicomnodes.dimse import REJECTED_TRANSIENT
from dicomnodes.models import (
    DicomServerSettings,
    TransferJob,
)
from dicomnodes.scp import outgoing

logger = logging.getLogger(__name__)


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
        self.ae_title = self.settings.our_ae_title()  # our calling AE, and the C-MOVE destination for us
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
        if assoc is not None:
            assoc.abort()
            assoc.link.shutdown()  # the read that waits for a response ends now

    # --- the association --------------------------------------------------------------
    def connect(self, contexts, *, roles=None, requestor=None):
        """An association to the peer on our runtime (outgoing.connect, or
        `requestor.connect` for C-FIND/C-MOVE/C-GET)."""
        if self.progress.cancelled:
            raise Cancelled()
        opener = requestor.connect if requestor is not None else outgoing.connect
        try:
            self.assoc = opener(
                self.peer.host,
                self.peer.port,
                calling_ae=self.ae_title,
                called_ae=self.peer.ae_title,
                contexts=contexts,
                timeout=self.timeout,
                roles=roles,
            )
        except outgoing.CannotConnect as exc:
            if self.progress.cancelled:
                raise Cancelled() from None
            if exc.rejection is not None and exc.rejection[0] != REJECTED_TRANSIENT:
                raise Refused(str(exc)) from None
            raise NetworkFailure(str(exc)) from None
        return self.assoc

    def lost(self, asked_at):
        """An empty response: cancelled by us, timed out, or aborted by the peer."""
        if self.progress.cancelled:
            raise Cancelled()
        if time.monotonic() - asked_at >= self.timeout * 0.9:
            raise NetworkFailure(f"peer did not answer within {self.timeout:g} s")
        raise NetworkFailure("the peer aborted the association or closed the connection")

    def close(self):
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            outgoing.finish(assoc)

    def abort(self):
        assoc, self.assoc = self.assoc, None
        if assoc is not None:
            assoc.abort()
            assoc.link.close()
