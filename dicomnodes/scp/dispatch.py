"""The runscp dispatcher: one listening socket, several worker processes.

An association's work is Python holding the GIL (the store path, the index,
C-FIND answers), so one process uses one core.  With `runscp --processes N`
the parent accepts connections and hands each to a worker in turn over a
UNIX socket (SCM_RIGHTS), where a `server.Listener` receives it.  We chose
this over SO_REUSEPORT, whose hash put all four associations of a benchmark
run on one worker about one time in eight.

runscp's loop drives a `Dispatcher` in small steps: `reap()` and
`start_workers()` replace dead workers, `follow_settings()` keeps the socket
in line with the settings (rebind on a new port, idle on port 0; a new AE
title needs no new socket), `hand_over()` passes waiting connections on.
"""

import logging
import os
import select
import socket

from django.db import close_old_connections, connections

from dicomnodes.scp.limits import SharedCounts
from dicomnodes.scp.server import DISABLED, TLS_OFF, TLS_TAG
from pacs_site.listeners import SettingsFollower, listening_socket

logger = logging.getLogger(__name__)


class Dispatcher:
    """Owns the port; `spawn(channel, inherited, shared) -> pid` starts a
    worker on a channel; the worker closes the `inherited` sockets it must
    not hold and counts its associations in `shared` (a `limits.SharedCounts`
    and its row there), so the maximums hold for all workers together."""

    def __init__(self, *, processes, spawn, load_config):
        self.processes = processes
        self.spawn = spawn
        self.load_config = load_config
        self.workers = []  # [(pid, our end of the channel)]
        self.counts = SharedCounts(rows=processes)
        self._rows = {}  # worker pid -> its row in `counts`
        self.listener = None
        self.follower = SettingsFollower(
            start=self._listen,
            stop=self._close_listener,
            update=self._answer_to,
            idle=DISABLED,
            log=logger,
        )
        self.tls_listener = None
        self.tls_follower = SettingsFollower(
            start=self._listen_tls, stop=self._close_tls_listener, idle=TLS_OFF, log=logger
        )
        self.next_worker = 0
        self.handed_over = 0

    def start_workers(self):
        # Close our database connections first: a forked child must not
        # share (and later close) the parent's connection.
        connections.close_all()
        while len(self.workers) < self.processes:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            listeners = [sock for sock in (self.listener, self.tls_listener) if sock is not None]
            inherited = [ours] + [c for _, c in self.workers] + listeners
            row = min(set(range(self.processes)) - set(self._rows.values()))
            self.counts.clear(row)
            pid = self.spawn(theirs, inherited, (self.counts, row))
            theirs.close()
            self.workers.append((pid, ours))
            self._rows[pid] = row

    def reap(self):
        """Forget workers that ended; returns how many."""
        gone = 0
        for pid, channel in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, -1
            if done:
                logger.error("runscp worker %d ended (status %d); starting another", pid, status)
                channel.close()
                self.workers.remove((pid, channel))
                self.counts.clear(self._rows.pop(pid))  # its associations ended with it
                gone += 1
        return gone

    def follow_settings(self):
        close_old_connections()
        try:
            cfg = self.load_config()
        except Exception as exc:
            logger.warning("cannot read the DICOM settings (%s); keeping the current ones", exc)
            return
        self.follower.follow(cfg.port, cfg.ae_title)
        self.tls_follower.follow(cfg.tls_port, cfg.ae_title)

    def _listen(self, port, ae_title):
        self.listener = listening_socket(port)
        logger.info(
            "DICOM server %s listening on port %d (all addresses), %d worker processes",
            ae_title,
            port,
            self.processes,
        )

    def _answer_to(self, old, new):
        """A new AE title on the same port needs no new socket: the workers
        read it from the settings."""
        (old_port, _), (port, ae_title) = old, new
        if port != old_port:
            return False
        logger.info("DICOM server now answers to %s on port %d", ae_title, port)
        return True

    def _close_listener(self):
        self.listener.close()
        self.listener = None

    def _listen_tls(self, port, ae_title):
        self.tls_listener = listening_socket(port)
        logger.info("DICOM server %s listening for TLS on port %d (all addresses)", ae_title, port)

    def _close_tls_listener(self):
        self.tls_listener.close()
        self.tls_listener = None

    def hand_over(self, timeout):
        """Wait up to `timeout` for connections and pass each to a worker."""
        listeners = [sock for sock in (self.listener, self.tls_listener) if sock is not None]
        if not listeners or not self.workers:
            select.select([], [], [], timeout)
            return 0
        readable, _, _ = select.select(listeners, [], [], timeout)
        if not readable:
            return 0
        listener = readable[0]
        tag = TLS_TAG if listener is self.tls_listener else b"c"
        try:
            client, _ = listener.accept()
        except OSError:
            return 0
        try:
            for _ in range(len(self.workers)):
                pid, channel = self.workers[self.next_worker % len(self.workers)]
                self.next_worker += 1
                try:
                    socket.send_fds(channel, [tag], [client.fileno()])
                    self.handed_over += 1
                    return 1
                except OSError as exc:
                    logger.warning("cannot hand a connection to worker %d: %s", pid, exc)
            return 0
        finally:
            client.close()  # the worker has its own copy now

    def stop(self):
        self.follower.stop()
        self.tls_follower.stop()
        for _, channel in self.workers:
            channel.close()
