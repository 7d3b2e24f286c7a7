"""The DICOM server of `manage.py runscp`: AE set-up, socket, settings reload.

`ScpService.step()` is one unit of work: re-read the settings and make the
listener match them (bind, rebind on a new port or AE title, idle on port 0:
`pacs_site.listeners.SettingsFollower`).  The management command only loops
over it.
"""

import logging
import logging.handlers
import os
import socket
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import close_old_connections
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicomnodes.archive.index import IndexWriter
from dicomnodes.archive.reconcile import index_orphans
from dicomnodes.archive.storage import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, remove_stale_temporaries
from dicomnodes.dimse import QUERY_RETRIEVE
from dicomnodes.models import PUBLISHING_SUFFIXES, DicomServerSettings, DuplicatePolicy
from dicomnodes.scp.acceptor import AcceptorSession
from dicomnodes.scp.access import AccessPolicy
from dicomnodes.scp.compat import configure_scp
from dicomnodes.scp.handlers import Handlers
from dicomnodes.scp.limits import Connection, ConnectionTable
from dicomnodes.scp.qr import QueryRetrieveHandlers
from dicomnodes.scp.sending import UNCOMPRESSED
from dicomnodes.scp.tls import server_context
from dicomnodes.signals import scp_started, send_logged
from pacs_site.listeners import SettingsFollower, listening_socket, peer_address

logger = logging.getLogger(__name__)

# Said once on port 0, by the one process that owns the port (this one or the dispatcher).
DISABLED = "DICOM server disabled (port 0 in the DICOM server settings)"
TLS_OFF = "DICOM over TLS off (TLS port 0 in the DICOM server settings)"

configure_scp()

_DEBUG_BINDINGS = [
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
]


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


# Our own runtime (dicomnodes.net, issue 14) unless PACS_SCP_RUNTIME=pynetdicom:
# the old one stays for one release, for comparison (bench/ingest.py) and as
# a fallback.
OWN_RUNTIME = os.environ.get("PACS_SCP_RUNTIME", "own") != "pynetdicom"


class _RequestHandler(RequestHandler):
    """Runs each association to its end, then lets the handlers log it."""

    def handle(self):
        conn = self.server.connection_of(self.request)
        try:
            tls = self.server.tls_context_for(self.request)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            logger.error("DICOM over TLS: cannot use the certificate and key of the settings: %s", exc)
            self.server.connections.close(conn)
            shut(self.request)
            return
        if OWN_RUNTIME or tls is not None:
            session = AcceptorSession(
                self.request,
                conn,
                config=self.server.limits,
                writer=self.server.writer,
                connections=self.server.connections,
                tls=tls,
            )
            try:
                with self.server.sessions_lock:
                    self.server.sessions.add(session)
                session.run()
            finally:
                with self.server.sessions_lock:
                    self.server.sessions.discard(session)
                self.server.connections.close(conn)
            return
        try:
            assoc = self._create_association()
            assoc.pacs_connection = conn  # Handlers.on_requested admits it (limits.py)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
            self.server.on_association_end(assoc)
        finally:
            self.server.connections.close(conn)


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


class PacsServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on our listening socket (`listening_socket`:
    every IPv4 and IPv6 address), with TCP_NODELAY on every connection.  With
    `channel`, it listens on nothing itself: connections accepted by the
    runscp dispatcher arrive over that UNIX socket.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        ae,
        port,
        ae_title,
        contexts,
        *,
        evt_handlers,
        on_end,
        connections,
        limits,
        writer=None,
        channel=None,
        tls=False,
    ):
        self.on_association_end = on_end
        self.writer = writer
        # TLS: this listener's connections (tls=True), or those the
        # dispatcher tagged as coming from its TLS port (a worker's channel).
        self.tls = tls
        self._tls_clients = set()
        self.sessions = set()  # AcceptorSessions running (our runtime)
        self.sessions_lock = threading.Lock()
        self.channel = channel
        self.connections = connections  # limits.ConnectionTable
        self.limits = limits  # () -> ScpConfig
        self._accepted = {}  # client socket -> limits.Connection, until its handler takes it
        self._accepted_lock = threading.Lock()
        self._evicted_since_log = 0
        self._eviction_logged = 0.0
        # The address only sets the family of socketserver's placeholder
        # socket, which server_bind() replaces.
        super().__init__(
            ae, ("0.0.0.0", port), ae_title, contexts, evt_handlers=evt_handlers, request_handler=_RequestHandler
        )

    def server_bind(self):
        placeholder = self.socket
        if self.channel is not None:
            self.socket = self.channel
        else:
            self.socket = listening_socket(self.server_address[1], backlog=self.request_queue_size)
            if self.ae.network_timeout is not None:  # as pynetdicom's own server_bind()
                self.socket.settimeout(self.ae.network_timeout)
            self.server_address = self.socket.getsockname()
        placeholder.close()

    def server_activate(self):
        pass  # listening_socket() listens already; a channel is not listened on

    def get_request(self):
        """Accept a connection, give it its time-outs, and make room for it
        among the connections still waiting to ask for an association."""
        if self.channel is None:
            client, address = super().get_request()
            tls = self.tls
        else:
            client, address, tls = receive_connection(self.channel)
        cfg = self.limits()
        _tune(client, cfg.service_timeout)
        conn = Connection(peer_address(str(address[0])), client)
        with self._accepted_lock:
            self._accepted[client] = conn
            if tls:
                self._tls_clients.add(client)
        for evicted in self.connections.accept(conn, max_waiting=cfg.max_associations):
            shut(evicted.sock)
            self._log_eviction(evicted)
        return client, address

    def connection_of(self, client):
        with self._accepted_lock:
            return self._accepted.pop(client)

    def tls_context_for(self, client):
        """The SSLContext to wrap `client` in, or None for a plain connection."""
        with self._accepted_lock:
            if client not in self._tls_clients:
                return None
            self._tls_clients.discard(client)
        return self.limits().tls_context()

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
    address, came to the TLS port)."""
    tag, fds, _, _ = socket.recv_fds(channel, 16, 1)
    if not fds:
        raise OSError("the runscp dispatcher closed the channel")
    client = socket.socket(fileno=fds[0])
    return client, client.getpeername(), tag == TLS_TAG


TLS_TAG = b"t"  # the dispatcher's message with a connection to the TLS port (else b"c")


MAXIMUM_PDU_RECEIVED = 2**20


def build_ae() -> AE:
    ae = AE()
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    # Incoming associations are limited by ConnectionTable (settings), not
    # by pynetdicom, whose count would include associations still being torn down.
    ae.maximum_associations = 1_000_000
    # What we ask peers to send at most (compat.bounded_recv refuses twice
    # as much).  Bigger PDUs gain nothing measurable (bench/ingest.py).
    ae.maximum_pdu_size = MAXIMUM_PDU_RECEIVED
    ae.require_called_aet = False  # checked in Handlers.on_requested (we answer to several)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for sop_class in QUERY_RETRIEVE:
        ae.add_supported_context(sop_class, UNCOMPRESSED)
    # No storage contexts here: with UNRESTRICTED_STORAGE_SERVICE every
    # storage-like context is accepted whatever this list says, and pynetdicom
    # deep-copies the list for every association (≈50 ms with all ~130
    # storage SOP classes × every transfer syntax).
    return ae


class ScpService:
    """One runscp process: a listener kept in line with the settings."""

    def __init__(self, *, port=None, ae_title=None, channel=None):
        self.port_override = port
        self.ae_title_override = ae_title
        self.channel = channel
        self.ae = build_ae()
        # The index writer's hooks send studies_created / association_closed.
        self.writer = IndexWriter().start()
        # Publishing starts its clock here (delayed burns, robot status).
        send_logged(scp_started, ScpService)
        self._config = None
        self.connections = ConnectionTable()
        self.handlers = Handlers(lambda: self._config, self.writer, self.connections)
        self.qr_handlers = QueryRetrieveHandlers(lambda: self._config)
        self.server = None
        self._last_server = None
        self._last_tls_server = None
        self._server_thread = None
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
        self.ae.ae_title = cfg.ae_title  # calling AE of C-MOVE sub-associations
        self.ae.connection_timeout = cfg.service_timeout  # C-MOVE sub-associations
        self.ae.acse_timeout = cfg.service_timeout
        self.ae.dimse_timeout = cfg.service_timeout
        self.ae.network_timeout = cfg.service_timeout
        self._apply_debug(cfg.debug)
        if self.channel is not None:
            # A worker: the dispatcher owns the ports and follows their changes.
            return self.server is None and self.follower.start(cfg.port, cfg.ae_title)
        changed = self.follower.follow(cfg.port, cfg.ae_title)
        return self.tls_follower.follow(cfg.tls_port, cfg.ae_title) or changed

    def _start_listener(self, port, ae_title):
        self.server = self._new_server(port, ae_title, channel=self.channel)
        self.ae._servers.append(self.server)
        self._last_server = self.server
        self._server_thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"scp-listener-{port}",
            daemon=True,
        )
        self._server_thread.start()
        if self.channel is None:
            logger.info("DICOM server %s listening on port %d (all addresses)", ae_title, port)

    def _new_server(self, port, ae_title, *, tls=False, channel=None):
        return PacsServer(
            self.ae,
            port,
            ae_title,
            self.ae.supported_contexts,
            evt_handlers=self.handlers.bindings()
            + self.qr_handlers.bindings()
            + (_DEBUG_BINDINGS if self._config.debug else []),
            on_end=self.handlers.finish,
            connections=self.connections,
            limits=lambda: self._config,
            writer=self.writer,
            channel=channel,
            tls=tls,
        )

    def _start_tls_listener(self, port, ae_title):
        """The TLS port (one process; with workers the dispatcher owns it)."""
        self.tls_server = self._last_tls_server = self._new_server(port, ae_title, tls=True)
        threading.Thread(
            target=self.tls_server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"scp-tls-listener-{port}",
            daemon=True,
        ).start()
        logger.info("DICOM server %s listening for TLS on port %d (all addresses)", ae_title, port)

    def _stop_tls_listener(self):
        self.tls_server.shutdown()
        self.tls_server = None

    def _stop_listener(self):
        self.server.shutdown()  # stops accepting; running associations go on
        self.server = None
        self._server_thread = None

    def _apply_debug(self, debug):
        pn_logger = logging.getLogger("pynetdicom")
        if debug and self._debug_handler is None:
            settings.PACS_LOG_DIR.mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.RotatingFileHandler(
                settings.PACS_LOG_DIR / "dicom-debug.log", maxBytes=10 * 2**20, backupCount=5
            )
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
            handler.setLevel(logging.DEBUG)
            for name in ("pynetdicom", "dicomnodes"):
                logging.getLogger(name).addHandler(handler)
            pn_logger.setLevel(logging.DEBUG)
            logging.getLogger("dicomnodes").setLevel(logging.DEBUG)
            if self.server is not None:
                for event, handler_fn in _DEBUG_BINDINGS:
                    self.server.bind(event, handler_fn)
            self._debug_handler = handler
            logger.info("DICOM debug log on: %s", settings.PACS_LOG_DIR / "dicom-debug.log")
        elif not debug and self._debug_handler is not None:
            for name in ("pynetdicom", "dicomnodes"):
                logging.getLogger(name).removeHandler(self._debug_handler)
            self._debug_handler.close()
            self._debug_handler = None
            pn_logger.setLevel(logging.WARNING)
            logging.getLogger("dicomnodes").setLevel(logging.NOTSET)
            if self.server is not None:
                for event, handler_fn in _DEBUG_BINDINGS:
                    self.server.unbind(event, handler_fn)
            logger.info("DICOM debug log off")

    def _close_sessions(self, deadline):
        """Our runtime's associations: up to `deadline` to end, then their
        sockets are shut (each thread sees the end at once and logs it)."""
        for server in (self._last_server, self._last_tls_server):
            if server is None or _wait_sessions(server, deadline):
                continue
            with server.sessions_lock:
                running = list(server.sessions)
            for session in running:
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
        deadline = time.monotonic() + timeout
        # Only associations are waited for: the thread of a connection that
        # never became one may sit in pynetdicom's ACSE wait for its request
        # (acse_timeout) though its socket is shut; it is a daemon thread.
        self._close_sessions(deadline)
        running = [t for t in threading.enumerate() if isinstance(t, Association) and t.is_established]
        for assoc in running:
            assoc.join(max(0.0, deadline - time.monotonic()))
        for assoc in running:
            if assoc.is_alive() and assoc.is_established:
                try:
                    assoc.abort(block=False)  # queue an A-ABORT for the peer; its socket is shut below
                except Exception as exc:  # the peer is gone: nothing left to tell it
                    logger.debug("abort of %s failed: %s", assoc.name, exc)
        if any(assoc.is_alive() for assoc in running):
            time.sleep(0.2)  # let the DUL threads send the A-ABORTs queued above
        for conn in self.connections.stuck():
            shut(conn.sock)
        end = time.monotonic() + 2.0
        for assoc in running:
            assoc.join(max(0.0, end - time.monotonic()))
        self.writer.stop()


def _wait_sessions(server, deadline):
    """True once no session of `server` runs, False at `deadline`."""
    while time.monotonic() < deadline:
        with server.sessions_lock:
            if not server.sessions:
                return True
        time.sleep(0.05)
    return False


def prepare_storage():
    removed = remove_stale_temporaries()
    if removed:
        logger.info("removed %d stale temporary files from the storage folder", removed)
    index_orphans()  # files written but never indexed (a kill, a 0110 never resent)
