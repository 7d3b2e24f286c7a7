"""The runscp dispatcher: one listening socket, several worker processes.

pynetdicom spends most of its time holding the GIL, so one process uses one
core.  With `runscp --processes N` the parent accepts connections and hands
each to a worker in turn over a UNIX socket (SCM_RIGHTS).  We chose this over
SO_REUSEPORT, whose hash put all four associations of a benchmark run on one
worker about one time in eight.

`Dispatcher.step()` is one unit of work: follow the settings (rebind on a new
port, close on port 0), restart dead workers, hand over waiting connections.
"""

import logging
import os
import select
import socket

from django.db import close_old_connections, connections

from pacs_site.ports import bind_failure

logger = logging.getLogger(__name__)


def open_listener(port):
    """A listening TCP socket on every address (dual-stack where IPv6 works)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address = "::"
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = "0.0.0.0"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class Dispatcher:
    """Owns the port; `spawn(channel, inherited) -> pid` starts a worker on a
    channel; the worker closes the `inherited` sockets it must not hold."""

    def __init__(self, *, processes, spawn, load_config):
        self.processes = processes
        self.spawn = spawn
        self.load_config = load_config
        self.workers = []  # [(pid, our end of the channel)]
        self.listener = None
        self.bound = None  # (port, ae_title)
        self.bind_error = None
        self.next_worker = 0
        self.handed_over = 0

    def start_workers(self):
        # Close our database connections first: a forked child must not
        # share (and later close) the parent's connection.
        connections.close_all()
        while len(self.workers) < self.processes:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            inherited = [ours] + [c for _, c in self.workers] + ([self.listener] if self.listener else [])
            pid = self.spawn(theirs, inherited)
            theirs.close()
            self.workers.append((pid, ours))

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
                gone += 1
        return gone

    def follow_settings(self):
        close_old_connections()
        try:
            cfg = self.load_config()
        except Exception as exc:
            logger.warning("cannot read the DICOM settings (%s); keeping the current ones", exc)
            return
        wanted = (cfg.port, cfg.ae_title)
        if wanted == self.bound:
            return
        if self.listener is not None and (self.bound and self.bound[0] == cfg.port):
            self.bound = wanted  # a new AE title needs no new socket: workers read it
            logger.info("DICOM server now answers to %s on port %d", cfg.ae_title, cfg.port)
            return
        self.close_listener()
        if cfg.port == 0:
            logger.info("DICOM server disabled (port 0 in the DICOM server settings); idle")
            self.bound = wanted
            return
        try:
            self.listener = open_listener(cfg.port)
        except OSError as exc:
            message = bind_failure(cfg.port, exc)
            if message != self.bind_error:
                logger.error("%s; retrying", message)
                self.bind_error = message
            return
        self.bind_error = None
        self.bound = wanted
        logger.info(
            "DICOM server %s listening on port %d (all addresses), %d worker processes",
            cfg.ae_title,
            cfg.port,
            self.processes,
        )

    def close_listener(self):
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.bound = None

    def hand_over(self, timeout):
        """Wait up to `timeout` for connections and pass each to a worker."""
        if self.listener is None or not self.workers:
            select.select([], [], [], timeout)
            return 0
        readable, _, _ = select.select([self.listener], [], [], timeout)
        if not readable:
            return 0
        try:
            client, _ = self.listener.accept()
        except OSError:
            return 0
        try:
            for _ in range(len(self.workers)):
                pid, channel = self.workers[self.next_worker % len(self.workers)]
                self.next_worker += 1
                try:
                    socket.send_fds(channel, [b"c"], [client.fileno()])
                    self.handed_over += 1
                    return 1
                except OSError as exc:
                    logger.warning("cannot hand a connection to worker %d: %s", pid, exc)
            return 0
        finally:
            client.close()  # the worker has its own copy now

    def stop(self):
        self.close_listener()
        for _, channel in self.workers:
            channel.close()
