"""The DICOM server of `manage.py runscp`: listener, settings reload.

`ScpService.step()` is one unit of work: re-read the settings and make the
listener match them (bind, rebind on a new port or AE title, idle on port 0:
`pacs_site.listeners.SettingsFollower`).  The management command only loops
over it.  A `Listener` accepts connections (or receives them from the runscp
dispatcher) and runs each as an `AcceptorSession` (`acceptor.py`, on our own
runtime `dicomnodes.net`) in a thread of its own.
"""

import itertools
import logging
import logging.handlers
import select
import socket
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections

from dicomnodes.archive.index import IndexWriter
from dicomnodes.archive.reconcile import index_orphans
from dicomnodes.archive.storage import remove_stale_temporaries
from dicomnodes.models import PUBLISHING_SUFFIXES, DicomServerSettings, DuplicatePolicy
from dicomnodes.scp.acceptor import AcceptorSession
from dicomnodes.scp.access import AccessPolicy
from dicomnodes.scp.limits import Connection, ConnectionTable
from dicomnodes.scp.tls import server_context
from dicomnodes.signals import scp_started, send_logged
from pacs_site.listeners import SettingsFollower, listening_socket, peer_address

logger = logging.getLogger(__name__)

# Said once on port 0, by the one process that owns the port (this one or the dispatcher).
DISABLED = "DICOM server disabled (port 0 in the DICOM server settings)"
TLS_OFF = "DICOM over TLS off (TLS port 0 in the DICOM server settings)"


@dataclass(frozen=True)
class ScpConfig:
    ae_title: str
    port: int
    debug: bool
    service_timeout: int
    overwrite: bool
    fsync: bool
    access: AccessPolicy
    case_insensitive_names: bool = True
    find_result_limit: int = 0
    max_associations: int = 100
    max_associations_per_address: int = 20
    max_inflated: int = 1024 * 2**20  # bytes
    tls_port: int = 0
    tls_files: tuple = ("", "", "")  # certificate, key, client CA certificates

    def tls_context(self):
        """The server SSLContext of the TLS port (scp/tls.py)."""
        return server_context(*self.tls_files)

    @property
    def called_ae_titles(self):
        return {self.ae_title} | {self.ae_title + s for s in PUBLISHING_SUFFIXES}


def load_config(*, port=None, ae_title=None) -> ScpConfig:
    """The stored settings, with the command-line overrides applied."""
    row = DicomServerSettings.load()
    return ScpConfig(
        ae_title=ae_title if ae_title is not None else row.ae_title,
        port=port if port is not None else row.port,
        debug=row.debug,
        service_timeout=row.service_timeout,
        overwrite=row.duplicate_policy == DuplicatePolicy.OVERWRITE,
        fsync=row.fsync_on_store,
        access=AccessPolicy.load(row),
        case_insensitive_names=row.case_insensitive_names,
        find_result_limit=row.find_result_limit,
        max_associations=row.max_associations,
        max_associations_per_address=row.max_associations_per_address,
        max_inflated=row.max_inflated_mb * 2**20,
        tls_port=row.tls_port,
        tls_files=(row.tls_certificate_file, row.tls_key_file, row.tls_client_ca_file),
    )


# Dead peers on idle connections are found by the kernel (Linux's
# defaults wait two hours before the first probe).
_KEEPALIVE = [("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6)]


def _tune(client, timeout):
    """TCP_NODELAY, keep-alive and a time-out on every blocking call."""
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in _KEEPALIVE:
        if hasattr(socket, name):
            client.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    client.settimeout(timeout)


def shut(sock):
    """End a connection now: the thread reading it sees the end at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


POLL_INTERVAL = 0.2  # how soon a stopped listener notices (seconds)
_numbers = itertools.count(1)


class Listener:
    """Accepts connections on a listening socket (`listening_socket`: every
    IPv4 and IPv6 address) or, with `channel`, receives those the runscp
    dispatcher accepted over that UNIX socket; each runs as an
    `AcceptorSession` in a daemon thread of its own.

    1. An accepted connection gets TCP_NODELAY, keep-alive and the service
       time-out, and counts as waiting in the `ConnectionTable`; making room
       for it may shut the socket of an older waiting one (limits.py).
    2. Its thread wraps it in TLS when it came to the TLS port (`tls`, or
       the dispatcher's tag), then runs the session to its end; the session
       admits it as an association (or rejects it) and logs it.
    3. `shutdown()` stops accepting and closes the socket; associations
       under way go on (`ScpService.close()` ends them).
    """

    def __init__(self, port, *, config, writer, connections, channel=None, tls=False):
        self.config = config  # () -> ScpConfig
        self.writer = writer
        self.connections = connections  # limits.ConnectionTable
        self.channel = channel
        self.tls = tls  # this listener's connections come to the TLS port
        self.socket = channel if channel is not None else listening_socket(port)
        if channel is None:
            # accept() after select() must not block: a peer may be gone by then.
            self.socket.settimeout(POLL_INTERVAL)
        self.sessions = set()  # AcceptorSessions running
        self.sessions_lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._evicted_since_log = 0
        self._eviction_logged = 0.0

    @property
    def port(self):
        return self.socket.getsockname()[1] if self.channel is None else None

    def serve_forever(self):
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([self.socket], [], [], POLL_INTERVAL)
                if readable and not self._stop.is_set():
                    self.accept_one()
        finally:
            self._done.set()

    def shutdown(self):
        """Stop accepting (within POLL_INTERVAL) and close the socket."""
        self._stop.set()
        self._done.wait(2 * POLL_INTERVAL + 1)
        self.socket.close()

    def accept_one(self) -> bool:
        """Take one waiting connection and start its thread; False if none
        came (gone before it was accepted, an error: logged)."""
        try:
            if self.channel is None:
                client, address = self.socket.accept()
                tls = self.tls
            else:
                received = receive_connection(self.channel)
                if received is None:
                    logger.warning("runscp worker: a message from the dispatcher without a connection")
                    return False
                client, tls = received
        except (TimeoutError, BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            # EMFILE and the like: the connection waits in the backlog; try again shortly.
            logger.warning("cannot accept a DICOM connection: %s", exc)
            self._stop.wait(POLL_INTERVAL)
            return False
        try:
            if self.channel is not None:
                address = client.getpeername()
            _tune(client, self.config().service_timeout)
        except OSError:  # the peer has gone already
            client.close()
            return False
        conn = Connection(peer_address(str(address[0])), client)
        for evicted in self.connections.accept(conn, max_waiting=self.config().max_associations):
            shut(evicted.sock)
            self._log_eviction(evicted)
        threading.Thread(
            target=self._run, args=(client, conn, tls), name=f"scp-association-{next(_numbers)}", daemon=True
        ).start()
        return True

    def _run(self, client, conn, tls):
        try:
            try:
                context = self.config().tls_context() if tls else None
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                logger.error("DICOM over TLS: cannot use the certificate and key of the settings: %s", exc)
                shut(client)
                return
            session = AcceptorSession(
                client, conn, config=self.config, writer=self.writer, connections=self.connections, tls=context
            )
            with self.sessions_lock:
                self.sessions.add(session)
            try:
                session.run()
            finally:
                with self.sessions_lock:
                    self.sessions.discard(session)
        finally:
            self.connections.close(conn)
            client.close()  # a no-op when TLS took the socket over (it closes its own)

    def running(self):
        with self.sessions_lock:
            return list(self.sessions)

    def _log_eviction(self, conn):
        """One line per 10 s at most: a flood of idle connections must not
        flood the log too."""
        self._evicted_since_log += 1
        now = time.monotonic()
        if now - self._eviction_logged >= 10:
            logger.warning(
                "%d connection(s) that had not asked for an association closed to make room (latest from %s)",
                self._evicted_since_log,
                conn.address,
            )
            self._evicted_since_log = 0
            self._eviction_logged = now


def receive_connection(channel):
    """A connection handed over by the dispatcher (SCM_RIGHTS): (socket,
    came to the TLS port), or None for a message that holds none.  (The
    channel is a datagram socket: a dispatcher that dies does not end it;
    runscp's worker loop watches its parent instead.)"""
    tag, fds, _, _ = socket.recv_fds(channel, 16, 1)
    if not fds:
        return None
    return socket.socket(fileno=fds[0]), tag == TLS_TAG


TLS_TAG = b"t"  # the dispatcher's message with a connection to the TLS port (else b"c")


class ScpService:
    """One runscp process: a listener kept in line with the settings."""

    def __init__(self, *, port=None, ae_title=None, channel=None, shared=None):
        """`channel`: a worker's, from the dispatcher; `shared`: where the
        workers count their associations together (`limits.SharedCounts`, row)."""
        self.port_override = port
        self.ae_title_override = ae_title
        self.channel = channel
        # The index writer's hooks send studies_created / association_closed.
        self.writer = IndexWriter().start()
        # Publishing starts its clock here (delayed burns, robot status).
        send_logged(scp_started, ScpService)
        self._config = None
        self.connections = ConnectionTable(shared)
        self.server = None
        self._last_server = None
        self._last_tls_server = None
        self.follower = SettingsFollower(
            start=self._start_listener,
            stop=self._stop_listener,
            idle=DISABLED,
            log=logger,
        )
        self._debug_handler = None
        self.tls_server = None
        self.tls_follower = SettingsFollower(
            start=self._start_tls_listener, stop=self._stop_tls_listener, idle=TLS_OFF, log=logger
        )

    @property
    def config(self):
        return self._config

    def step(self) -> bool:
        """Apply the current settings; True if the listener changed."""
        close_old_connections()
        try:
            cfg = load_config(port=self.port_override, ae_title=self.ae_title_override)
        except Exception as exc:  # database briefly unavailable: keep what we have
            logger.warning("cannot read the DICOM settings (%s); keeping the current ones", exc)
            return False
        self._config = cfg
        self._apply_debug(cfg.debug)
        if self.channel is not None:
            # A worker: the dispatcher owns the ports and follows their changes.
            return self.server is None and self.follower.start(cfg.port, cfg.ae_title)
        changed = self.follower.follow(cfg.port, cfg.ae_title)
        return self.tls_follower.follow(cfg.tls_port, cfg.ae_title) or changed

    def _start_listener(self, port, ae_title):
        self.server = self._last_server = self._new_server(port, channel=self.channel)
        if self.channel is None:
            logger.info("DICOM server %s listening on port %d (all addresses)", ae_title, port)

    def _new_server(self, port, *, tls=False, channel=None):
        server = Listener(
            port,
            config=lambda: self._config,
            writer=self.writer,
            connections=self.connections,
            channel=channel,
            tls=tls,
        )
        name = "scp-worker-listener" if channel is not None else f"scp-{'tls-' if tls else ''}listener-{port}"
        threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
        return server

    def _start_tls_listener(self, port, ae_title):
        """The TLS port (one process; with workers the dispatcher owns it)."""
        self.tls_server = self._last_tls_server = self._new_server(port, tls=True)
        logger.info("DICOM server %s listening for TLS on port %d (all addresses)", ae_title, port)

    def _stop_tls_listener(self):
        self.tls_server.shutdown()
        self.tls_server = None

    def _stop_listener(self):
        self.server.shutdown()  # stops accepting; running associations go on
        self.server = None

    def _apply_debug(self, debug):
        """Debug mode: our runtime's PDU and DIMSE lines (dicomnodes.net,
        scp/acceptor.py log them at DEBUG) go to logs/dicom-debug.log."""
        ours = logging.getLogger("dicomnodes")
        if debug and self._debug_handler is None:
            settings.PACS_LOG_DIR.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                settings.PACS_LOG_DIR / "dicom-debug.log", maxBytes=10 * 2**20, backupCount=5
            )
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
            handler.setLevel(logging.DEBUG)
            ours.addHandler(handler)
            ours.setLevel(logging.DEBUG)
            self._debug_handler = handler
            logger.info("DICOM debug log on: %s", settings.PACS_LOG_DIR / "dicom-debug.log")
        elif not debug and self._debug_handler is not None:
            ours.removeHandler(self._debug_handler)
            self._debug_handler.close()
            self._debug_handler = None
            ours.setLevel(logging.NOTSET)
            logger.info("DICOM debug log off")

    def _close_sessions(self, deadline):
        """The associations: up to `deadline` to end, then they are aborted
        and their sockets shut (each thread sees the end at once and logs it)."""
        for server in (self._last_server, self._last_tls_server):
            if server is None or _wait_sessions(server, deadline):
                continue
            for session in server.running():
                if session.assoc is not None:
                    session.assoc.abort()
                shut(session.sock)
            _wait_sessions(server, time.monotonic() + 2.0)

    def close(self, timeout=5.0):
        """Stop listening; connections that never asked for an association
        end at once, associations get up to `timeout` to finish and are
        aborted after it; then the index writer is flushed.  Nothing here
        waits on a peer without a bound (SIGTERM must stop runscp)."""
        self.follower.stop()
        self.tls_follower.stop()
        for conn in self.connections.stuck():
            if not conn.associated:
                shut(conn.sock)
        self._close_sessions(time.monotonic() + timeout)
        for conn in self.connections.stuck():
            shut(conn.sock)
        self.writer.stop()


def _wait_sessions(server, deadline):
    """True once no session of `server` runs, False at `deadline`."""
    while time.monotonic() < deadline:
        if not server.running():
            return True
        time.sleep(0.05)
    return False


def prepare_storage():
    removed = remove_stale_temporaries()
    if removed:
        logger.info("removed %d stale temporary files from the storage folder", removed)
    index_orphans()  # files written but never indexed (a kill, a 0110 never resent)
