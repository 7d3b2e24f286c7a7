"""Audit events to a syslog collector, from a background thread.

`forward(events, settings)` never blocks: it puts the events in a bounded
queue (QUEUE_SIZE); when the queue is full (the collector is down or slow),
the events are dropped and counted — they stay in the database, whose
admin list and CSV export are the record of truth.  One thread per process
connects (TCP, or TLS checked against the configured CA file), sends each
event as an RFC 5424 message with octet-counting framing (pacs_site/atna.py),
and after a failure reconnects with a back-off (1 s doubling to 60 s); the
message that failed is sent again once connected (unless the settings
name another collector by then: the old one's backlog is dropped).
"""

import logging
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from dicomnodes.models import DicomServerSettings
from pacs_site import atna

logger = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
CONNECT_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 60.0


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    transport: str  # "tcp" or "tls"
    ca_file: str = ""

    @classmethod
    def of(cls, row):
        return cls(row.syslog_host, int(row.syslog_port), row.syslog_transport, row.syslog_ca_file)

    def __str__(self):
        return f"{self.transport}://{self.host}:{self.port}"


class Forwarder:
    """The queue and the thread that empties it (one per process: `forwarder()`)."""

    def __init__(self, *, queue_size=QUEUE_SIZE):
        self.queue = queue.Queue(maxsize=queue_size)
        self.sent = 0
        self.dropped = 0
        self.failures = 0
        self.last_error = ""
        self._sock = None
        self._connected_to = None
        self._backoff = FIRST_BACKOFF
        self._thread = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.hostname = socket.gethostname()
        self.latest = None  # the destination of the newest event queued

    def put(self, event, destination, source_id):
        self.latest = destination
        self._ensure_thread()
        try:
            self.queue.put_nowait((event, destination, source_id))
        except queue.Full:
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 1000 == 0:
                logger.warning("syslog: queue full, %d audit messages dropped so far (%s)", dropped, destination)

    def _ensure_thread(self):
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
                self._thread.start()

    def stop(self, timeout=5.0):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close()

    # --- the thread -----------------------------------------------------------------------

    def _run(self):
        while not self._stop.is_set():
            try:
                event, destination, source_id = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if destination != self.latest:  # queued for a collector the settings no longer name
                with self._lock:
                    self.dropped += 1
                continue
            message = atna.frame(
                atna.syslog_message(event, source_id=source_id, hostname=self.hostname, procid=str(event.pk or "-"))
            )
            while not self._stop.is_set() and not self._send(message, destination):
                if self.latest != destination:
                    # The settings now name another collector: this one's backlog goes.
                    with self._lock:
                        self.dropped += 1
                    break
                self._stop.wait(self._backoff)
                self._backoff = min(self._backoff * 2, MAX_BACKOFF)

    def _send(self, message, destination):
        try:
            if self._connected_to != destination:
                self._close()
                self._sock = _connect(destination)
                self._connected_to = destination
                logger.info("syslog: connected to %s", destination)
            self._sock.sendall(message)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            with self._lock:
                self.failures += 1
                self.last_error = f"{destination}: {exc}"
            if self._backoff == FIRST_BACKOFF:
                logger.warning("syslog: %s: %s (retrying with back-off)", destination, exc)
            self._close()
            return False
        with self._lock:
            self.sent += 1
        self._backoff = FIRST_BACKOFF
        return True

    def _close(self):
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self._connected_to = None


def _connect(destination):
    sock = socket.create_connection((destination.host, destination.port), timeout=CONNECT_TIMEOUT)
    try:
        if destination.transport == "tls":
            context = ssl.create_default_context(cafile=destination.ca_file or None)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            sock = context.wrap_socket(sock, server_hostname=destination.host)
        sock.settimeout(SEND_TIMEOUT)
        return sock
    except BaseException:
        sock.close()
        raise


_forwarder = None
_forwarder_lock = threading.Lock()


def forwarder():
    global _forwarder
    with _forwarder_lock:
        if _forwarder is None:
            _forwarder = Forwarder()
        return _forwarder


def source_id():
    """AuditSourceID: our AE title (the DICOM server settings)."""
    try:
        return DicomServerSettings.load().ae_title
    except Exception:
        return socket.gethostname()


_source = {"id": None, "at": 0.0}


def forward(events, row):
    """Queue `events` for the collector of the settings `row` (never blocks)."""
    if _source["id"] is None or time.monotonic() - _source["at"] > 60:
        _source.update(id=source_id(), at=time.monotonic())
    destination = Destination.of(row)
    target = forwarder()
    for event in events:
        target.put(event, destination, _source["id"])


def status_text():
    f = _forwarder
    if f is None:
        return "nothing forwarded by this process yet"
    text = f"{f.sent} sent, {f.dropped} dropped (queue full), {f.failures} failures, {f.queue.qsize()} waiting"
    return text + (f"; last error: {f.last_error}" if f.last_error else "")
