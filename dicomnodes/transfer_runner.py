"""One transfer job over the network: C-STORE to a peer, or C-MOVE / C-GET
from it.  `run_job()` is called by `transfers.run_next()` in a thread of its
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
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import build_role
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import code_to_category

from dicomnodes.echo import why_not_established
from dicomnodes.ingest import SUCCESS, store_received
from dicomnodes.models import (
    DicomServerSettings,
    DuplicatePolicy,
    Instance,
    Study,
    TransferJob,
    TransferKind,
    TransferLevel,
    TransferState,
)
from dicomnodes.retrieve import RetrieveError, Target, contexts_for, dataset_for, send_files_raw
from dicomnodes.services import status as dimse_status
from dicomnodes.sockets import NODELAY_HANDLERS
from dicomnodes.transfers import instances_for, retry_delay

logger = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
_TIMEOUTS = ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout")
_TRANSIENT = 2  # A-ASSOCIATE-RJ result: rejected-transient
# What we accept on a C-GET association, besides little endian: the usual
# compressed syntaxes, each in a context of its own so the peer can send an
# instance as it stores it.
_COMPRESSED = [JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless]


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

    def row_values(self):
        with self.lock:
            elapsed = time.monotonic() - self.started
            return dict(
                total=self.total,
                done=self.done,
                failed=self.failed,
                bytes=self.bytes,
                rate=round(self.done_here / elapsed, 2) if elapsed > 0.5 and self.done_here else None,
                delivered=list(self.delivered),
                failed_uids=list(self.failed_uids)[-1000:],
            )


class Monitor(threading.Thread):
    """Progress and heartbeat to the row, the cancel flag from it, every second."""

    def __init__(self, run):
        super().__init__(name=f"transfer-monitor-{run.job.pk}", daemon=True)
        self.run_ = run
        self.stopping = threading.Event()

    def run(self):
        try:
            while not self.stopping.wait(1.0):
                self.run_.save_progress()
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
    def save_progress(self, **extra):
        TransferJob.objects.filter(pk=self.job.pk).update(
            heartbeat_at=timezone.now(), updated_at=timezone.now(), **self.progress.row_values(), **extra
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
        _studies_retrieved(run)
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


# --- C-MOVE and C-GET from the peer ----------------------------------------------------------


@dataclass(frozen=True)
class RemoteInstance:
    study: str
    series: str
    sop: str
    sop_class: str


def _identifier(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def job_identifier(job):
    """The C-MOVE/C-GET identifier of the whole job (PS3.4 C.4.2.2.1)."""
    uids = job.uids if len(job.uids) > 1 else job.uids[0]
    if job.level == TransferLevel.STUDY:
        return _identifier("STUDY", StudyInstanceUID=uids)
    if job.level == TransferLevel.SERIES:
        return _identifier("SERIES", StudyInstanceUID=job.study_uid, SeriesInstanceUID=uids)
    return _identifier("IMAGE", StudyInstanceUID=job.study_uid, SeriesInstanceUID=job.series_uid, SOPInstanceUID=uids)


def remote_instances(run):
    """What the job's scope holds at the peer: C-FIND down to IMAGE level,
    one level at a time with single-valued upper keys (hierarchical query)."""
    job = run.job
    ae = AE(ae_title=run.settings.ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    run.associate(ae)
    try:
        if job.level == TransferLevel.STUDY:
            series = []
            for study in job.uids:
                ident = _identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID="")
                series += [(study, str(a.SeriesInstanceUID)) for a in _find(run, ident) if "SeriesInstanceUID" in a]
        elif job.level == TransferLevel.SERIES:
            series = [(job.study_uid, uid) for uid in job.uids]
        else:
            series = [(job.study_uid, job.series_uid)]
        found = []
        wanted = set(job.uids) if job.level == TransferLevel.IMAGE else None
        for study, series_uid in series:
            ident = _identifier(
                "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series_uid, SOPInstanceUID="", SOPClassUID=""
            )
            for a in _find(run, ident):
                sop = str(a.get("SOPInstanceUID", ""))
                if sop and (wanted is None or sop in wanted):
                    found.append(RemoteInstance(study, series_uid, sop, str(a.get("SOPClassUID", ""))))
    finally:
        run.close()
    return found


def _find(run, identifier):
    answers = []
    asked = time.monotonic()
    try:
        responses = run.assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)
        for status, answer in responses:
            if not status or "Status" not in status:
                run.lost(asked)
            if status.Status in PENDING:
                answers.append(answer)
            elif status.Status != 0x0000:
                raise Refused(f"C-FIND failed: status 0x{status.Status:04X} {status.get('ErrorComment', '')}".strip())
            asked = time.monotonic()
    except RuntimeError:
        run.lost(asked)
    return answers


def retrieve_plan(run, remote):
    """The identifiers to retrieve: the whole job, or (when `remote` is
    known) only the instances not stored here, series by series."""
    if remote is None:
        return [run.job_identifier]
    have = set(
        Instance.objects.filter(sop_instance_uid__in=[r.sop for r in remote]).values_list("sop_instance_uid", flat=True)
    )
    p = run.progress
    p.total = len(remote)
    p.done = len(have)
    by_series = {}
    for r in remote:
        if r.sop not in have:
            by_series.setdefault((r.study, r.series), []).append(r.sop)
    return [
        _identifier("IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=sops)
        for (study, series), sops in by_series.items()
    ]


def move(run):
    job = run.job
    run.job_identifier = job_identifier(job)
    retry = job.attempts > 1
    plan = retrieve_plan(run, remote_instances(run) if retry else None)
    if not plan:
        return
    destination = job.move_destination or run.settings.ae_title
    ae = AE(ae_title=run.settings.ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = run.associate(ae)
    for identifier in plan:
        base_done = run.progress.done
        asked = time.monotonic()
        try:
            for answer, _ in assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove):
                if not answer or "Status" not in answer:
                    run.lost(asked)
                _count(run, answer, base_done, final=answer.Status not in PENDING)
                _check_final(run, answer, destination)
                asked = time.monotonic()
        except RuntimeError:
            run.lost(asked)
    run.close()


def get(run):
    job, p = run.job, run.progress
    run.job_identifier = job_identifier(job)
    remote = remote_instances(run)
    plan = retrieve_plan(run, remote) if job.attempts > 1 else [run.job_identifier]
    if not remote:
        return  # nothing there: run_job says so
    if job.attempts == 1:
        p.total = len(remote)
    if not plan:
        return
    sop_classes = sorted({r.sop_class for r in remote if r.sop_class})
    ae = AE(ae_title=run.settings.ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    for sop_class in sop_classes[:120]:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for syntax in _COMPRESSED:
        for sop_class in sop_classes:
            if len(ae.requested_contexts) < 128:
                ae.add_requested_context(sop_class, [syntax])
    roles = [build_role(sop_class, scp_role=True) for sop_class in sop_classes[:120]]
    assoc = run.associate(ae, handlers=[(evt.EVT_C_STORE, lambda event: _store(run, event))], ext_neg=roles)
    for identifier in plan:
        asked = time.monotonic()
        try:
            for answer, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
                if not answer or "Status" not in answer:
                    run.lost(asked)
                _check_final(run, answer, None)
                asked = time.monotonic()
        except RuntimeError:
            run.lost(asked)
    run.close()


def _store(run, event):
    """A C-STORE sub-operation of our C-GET: stored and indexed as if it had
    come to runscp, from the peer's AE title to ours."""
    p = run.progress
    if p.cancelled:
        return 0xFE00
    raw = event.request.DataSet.getvalue()
    req = event.request
    result = store_received(
        raw,
        str(event.context.transfer_syntax),
        sop_class_uid=str(req.AffectedSOPClassUID),
        sop_instance_uid=str(req.AffectedSOPInstanceUID),
        called_ae=run.settings.ae_title,
        calling_ae=run.peer.ae_title,
        association_id=None,
        overwrite=run.settings.duplicate_policy == DuplicatePolicy.OVERWRITE,
        fsync=run.settings.fsync_on_store,
        writer=index_writer(),
        wait_timeout=max(run.timeout, 30),
    )
    if result.status == SUCCESS:
        p.delivered_one(result.sop_instance_uid, len(raw))
        return SUCCESS
    p.failed_one(str(req.AffectedSOPInstanceUID))
    return dimse_status(result.status, result.comment)


def _count(run, answer, base_done, *, final):
    """C-MOVE progress from the sub-operation counts of a response."""
    p = run.progress
    counts = {
        k: int(answer.get(f"NumberOf{k}Suboperations", 0) or 0) for k in ("Remaining", "Completed", "Failed", "Warning")
    }
    with p.lock:
        p.done = base_done + counts["Completed"] + counts["Warning"]
        if p.total is None or not final:
            p.total = max(p.total or 0, p.done + counts["Remaining"] + counts["Failed"])
        if final and counts["Failed"]:
            p.failed = counts["Failed"]


def _check_final(run, answer, destination):
    code = answer.Status
    if code in PENDING or code == 0x0000:
        return
    comment = str(answer.get("ErrorComment", "")).strip()
    if code == 0xB000:  # some sub-operations failed
        failed = answer.get("FailedSOPInstanceUIDList", [])
        p = run.progress
        with p.lock:
            p.failed_uids += [str(u) for u in (failed if isinstance(failed, (list, tuple)) else [failed]) if u]
            p.failed = max(p.failed, len(p.failed_uids), 1)
        return
    if code == 0xFE00:
        raise Cancelled()
    if code == 0xA801:
        raise Refused(f"{run.peer.ae_title} does not know {destination} as a C-MOVE destination (status 0xA801)")
    text = f"C-MOVE to {destination} failed" if destination else "C-GET failed"
    text += f": status 0x{code:04X}"
    raise Refused(f"{text} ({comment})" if comment else text)


def _studies_retrieved(run):
    from dicomnodes.notifications import study_received
    from pacs_site.models import EventKind

    job = run.job
    uids = job.uids if job.level == TransferLevel.STUDY else [job.study_uid]
    open_study = run.settings.open_transferred_studies
    for study in Study.objects.filter(study_instance_uid__in=uids):
        study_received(study, source=run.peer.ae_title, kind=EventKind.STUDY_RETRIEVED, open_study=open_study)


# --- the index writer of this process (C-GET) ---------------------------------------------------

_writer = None
_writer_lock = threading.Lock()


def index_writer():
    global _writer
    with _writer_lock:
        if _writer is None:
            from dicomnodes.index import IndexWriter
            from dicomnodes.scp import _studies_arrived

            _writer = IndexWriter(on_studies_created=_studies_arrived).start()
        return _writer
