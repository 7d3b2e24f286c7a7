"""The audit trail: who saw or changed what (issue 15).

Every app records its own events with `record(...)`; one row per event in
`AuditEvent`.  Actions are short dotted names (see `Action`).  Never pass a
token or a password: the actor of a patient link is "link <id>".

- `record(...)`: one event now (the web process, the workers); returns it.
- `record_many(events)`: unsaved AuditEvent rows in one INSERT (runscp's
  index writer thread writes an association's events so, pacs_site/audit_dicom.py).
- `web_read(request, action, ...)`: an event for a web request, with its
  actor (user name or patient link) and address.
Each written event is also handed to the syslog forwarder when forwarding
is on (pacs_site/syslog.py); a failure to audit is logged and never fails
the audited work.
"""

import atexit
import logging
import os
import queue
import threading
import time

from dicomnodes.models import Study
from pacs_site import syslog
from pacs_site.listeners import peer_address
from pacs_site.models import AuditEvent, AuditOutcome, AuditSettings

logger = logging.getLogger(__name__)

# Patient identifiers among query keys: recorded only when AuditSettings says so.
PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate")
MAX_KEYS = 32  # query keys kept per event
MAX_VALUE = 128  # characters kept per key's value


class Action:
    ASSOCIATION = "association"  # an incoming DICOM association ended
    QUERY = "query"  # C-FIND, QIDO-RS
    RETRIEVE = "retrieve"  # C-MOVE / C-GET
    WEB_READ = "web.read"  # DICOMweb / REST API read of patient data
    WEB_STORE = "web.store"  # STOW-RS
    LINK_OPEN = "link.open"
    LINK_DOWNLOAD = "link.download"
    VIEWER_OPEN = "viewer.open"
    BURN = "burn"
    SEND = "send"  # a transfer job (C-STORE to a peer) ended
    IMPORT = "import"  # a transfer job (C-MOVE / C-GET from a peer) ended
    DELETE = "delete"
    CORRECT = "correct"
    MERGE = "merge"
    SETTINGS = "settings"
    LOGIN = "login"
    LOGIN_FAILED = "login.failed"


# --- the settings, read at most every few seconds --------------------------------------------

SETTINGS_TTL = 5.0  # seconds: a change in the admin applies in every process within this
_settings = {"row": None, "at": 0.0}
_settings_lock = threading.Lock()


def current_settings() -> AuditSettings:
    """The AuditSettings row, cached for SETTINGS_TTL (events are frequent;
    the row changes rarely)."""
    with _settings_lock:
        row, at = _settings["row"], _settings["at"]
    if row is None or time.monotonic() - at > SETTINGS_TTL:
        # Read only (the defaults while there is no row): a read request must not write.
        row = AuditSettings.objects.filter(pk=1).first() or AuditSettings(pk=1)
        with _settings_lock:
            _settings.update(row=row, at=time.monotonic())
    return row


def forget_settings(**kwargs):
    """post_save of AuditSettings: this process reads them again at once."""
    with _settings_lock:
        _settings.update(row=None, at=0.0)


# --- writing ---------------------------------------------------------------------------------


def event(
    action,
    *,
    actor="",
    actor_kind="system",
    address="",
    outcome=AuditOutcome.SUCCESS,
    patient_id="",
    study_uid="",
    description="",
    details=None,
    at=None,
):
    """An unsaved AuditEvent, its values cut to their columns."""
    values = dict(
        action=action,
        actor=str(actor)[:150],
        actor_kind=actor_kind,
        address=str(address)[:64],
        outcome=int(outcome),
        patient_id=str(patient_id or "")[:64],
        study_instance_uid=str(study_uid or "")[:64],
        description=str(description)[:255],
        details=details or {},
    )
    if at is not None:
        values["at"] = at
    return AuditEvent(**values)


def record(action, **values):
    """Write one audit event (the keywords of `event`); returns it (None if
    it could not be written: the failure is logged, the audited work goes on)."""
    try:
        row = event(action, **values)
        row.save(force_insert=True)
    except Exception:
        logger.exception("audit event %s by %s could not be written", action, values.get("actor", ""))
        return None
    _forward([row])
    return row


def record_many(rows):
    """Write unsaved AuditEvent rows in one INSERT; returns how many."""
    if not rows:
        return 0
    try:
        AuditEvent.objects.bulk_create(rows)
    except Exception:
        logger.exception("%d audit events could not be written", len(rows))
        return 0
    _forward(rows)
    return len(rows)


class Spool:
    """The web process's events, written by one thread in batches.

    A request must not wait for its audit row: SQLite takes its write lock
    at BEGIN (pacs_site/settings.py), so an INSERT per QIDO-RS search or
    WADO-RS read waited behind the index writer's commits (and behind a
    test's open transaction, 30 s), and cost 2-3 ms of a 10 ms search
    (bench/dicomweb.py --quick).  Queued here, the thread writes what has
    gathered in one INSERT, in order.  Bounded: past MAX waiting events a
    request writes its own (slower, never lost); a batch that cannot be
    written is tried again, then logged and dropped; what waits at exit is
    written then."""

    MAX = 10_000
    BATCH = 500
    TRIES = 3

    def __init__(self):
        self._queue = queue.Queue(maxsize=self.MAX)
        self._thread = None
        self._lock = threading.Lock()

    def put(self, row):
        self._start()
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            record_many([row])

    def _start(self):
        with self._lock:
            if self._thread is None or not self._thread.is_alive():  # none yet, or a parent's before a fork
                self._thread = threading.Thread(target=self._run, name="audit-spool", daemon=True)
                self._thread.start()
                atexit.register(self.flush)

    def _take(self, first):
        rows = [first]
        while len(rows) < self.BATCH:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def _write(self, rows):
        for attempt in range(self.TRIES):
            if record_many(rows) == len(rows):
                return
            time.sleep(0.5 * (attempt + 1))
        logger.error("%d audit events dropped after %d tries", len(rows), self.TRIES)

    def _run(self):
        while True:
            self._write(self._take(self._queue.get()))

    def flush(self):
        """Write what waits now, in this thread (at exit)."""
        while True:
            try:
                first = self._queue.get_nowait()
            except queue.Empty:
                return
            record_many(self._take(first))


# The web process spools (portal/daphne_server.py sets PACS_AUDIT_SPOOL);
# elsewhere (workers, commands, the test client) events are written at once.
_spool = Spool() if os.environ.get("PACS_AUDIT_SPOOL") == "1" else None


def _forward(rows):
    try:
        row = current_settings()
        if row.syslog_enabled and row.syslog_host:
            syslog.forward(rows, row)
    except Exception:
        logger.exception("audit events could not be handed to syslog")


# --- web requests ----------------------------------------------------------------------------


def client_address(request) -> str:
    """The peer's address as the association log shows one (an IPv4 peer of
    a dual-stack socket without its ::ffff: prefix)."""
    address = request.META.get("REMOTE_ADDR") or ""
    return peer_address(address) if address else ""


def web_actor(request, *, token=None, user=None):
    """(actor, actor_kind) of a web request: the patient link ("link <id>",
    never the token), else the user (given, or the request's), else anonymous."""
    if token is not None:
        return f"link {token.pk}", "link"
    user = user if user is not None else getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return user.get_username(), "user"
    return "anonymous", "user"


def web_read(
    request,
    action=Action.WEB_READ,
    *,
    token=None,
    user=None,
    study_uid="",
    patient_id="",
    description="",
    details=None,
    outcome=AuditOutcome.SUCCESS,
):
    """One event for a web request (a read of patient data, a link opened,
    a STOW-RS store); never raises."""
    try:
        actor, kind = web_actor(request, token=token, user=user)
        if study_uid and not patient_id:
            patient_id = patient_of(study_uid)
        details = {"method": request.method, "path": _safe_path(request, token), **(details or {})}
        write = record if _spool is None else _spooled
        return write(
            action,
            actor=actor,
            actor_kind=kind,
            address=client_address(request),
            outcome=outcome,
            patient_id=patient_id,
            study_uid=study_uid,
            description=description,
            details=details,
        )
    except Exception:
        logger.exception("audit event %s could not be made", action)
        return None


def _spooled(action, **values):
    row = event(action, **values)
    _spool.put(row)
    return row


def _safe_path(request, token):
    """The request's path without a patient link's token (DICOMweb links
    carry it in the path: /dicomweb/t/<token>/…)."""
    path = request.path
    if token is not None and "/t/" in path:
        head, _, rest = path.partition("/t/")
        path = f"{head}/t/…/{rest.partition('/')[2]}"
    return path[:255]


def patient_of(study_uid) -> str:
    found = Study.objects.filter(study_instance_uid=study_uid).values_list("patient_id", flat=True).first()
    return found or ""


def query_keys(pairs, *, include_patient=None):
    """The keys of a query as {keyword: value} (values cut short; at most
    MAX_KEYS); patient identifiers only when the settings say so."""
    if include_patient is None:
        include_patient = current_settings().query_patient_keys
    keys = {}
    for name, value in pairs:
        if len(keys) >= MAX_KEYS:
            break
        if name in PATIENT_KEYS and not include_patient:
            continue
        keys[str(name)[:64]] = str(value)[:MAX_VALUE]
    return keys
