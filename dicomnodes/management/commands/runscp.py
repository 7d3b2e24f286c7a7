"""`manage.py runscp`: the DICOM server (C-ECHO, C-STORE, C-FIND, C-MOVE,
C-GET and Modality Worklist C-FIND), kept in line with the settings edited in
the admin; with `--processes N`, a dispatcher that owns the port and N worker
processes."""

import logging
import os
import signal
import time

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import connections
from django.utils import timezone

from dicomnodes import aetitle
from dicomnodes.scp import affinity
from dicomnodes.scp.dispatch import Dispatcher
from dicomnodes.scp.server import ScpService, load_config, prepare_storage
from dicomnodes.transfers.queue import wake_due_retries

logger = logging.getLogger("dicomnodes.runscp")


def _default_processes():
    raw = os.environ.get("PACS_SCP_PROCESSES")
    if raw:
        try:
            return max(1, int(raw))
        except ValueError:
            raise CommandError(f"PACS_SCP_PROCESSES={raw!r} is not a number") from None
    return max(1, min(4, os.cpu_count() or 1))


# A worker given SIGTERM stops within this (ScpService.close() bounds every
# wait); one that does not is killed, so that runscp always stops.
WORKER_STOP_TIMEOUT = 8.0


def _wait_for_workers(pids, *, timeout):
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                left.discard(pid)
        if not left:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for pid in left:
        logger.error("runscp worker %d did not stop within %.0f s; killing it", pid, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


class Command(BaseCommand):
    help = "Run the DICOM server (AE title and port from the DICOM server settings)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, help="listen on this port for this run (0 = disabled)")
        parser.add_argument(
            "--ae-title",
            help="our AE title for this run, instead of the stored one (sets PACS_AE_TITLE; default: that variable)",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="processes sharing the port (default: PACS_SCP_PROCESSES, else the CPU count up to 4)",
        )
        parser.add_argument(
            "--cpu-affinity",
            choices=affinity.MODES,
            default=None,
            help="with --processes N > 1, keep each worker process on a CPU of its own (auto) or let the"
            " scheduler move it (off); default: PACS_SCP_CPU_AFFINITY, else auto",
        )
        parser.add_argument("--poll", type=float, default=2.0, help="seconds between settings checks (default 2)")

    def handle(self, *args, port=None, ae_title=None, processes=None, cpu_affinity=None, poll=2.0, **options):
        if port is not None and not 0 <= port <= 65535:
            raise CommandError(f"--port {port}: a port is 0 to 65535 (0 = disabled)")
        if ae_title is not None:
            try:
                # In the environment too: this process's publishing trigger
                # and clock, and the workers it forks, ask our_ae_title().
                aetitle.set_override(ae_title)
            except ValidationError as exc:
                raise CommandError(f"--ae-title {ae_title!r}: {' '.join(exc.messages)}") from None
        ae_title = aetitle.override()  # also one inherited from runpacs --ae-title
        processes = processes or _default_processes()
        try:
            self.cpu_affinity = cpu_affinity or affinity.mode_from_env()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.shutdown = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        prepare_storage()
        connections.close_all()
        if processes == 1:
            return self._serve(port, ae_title, poll)
        return self._dispatch(processes, port, ae_title, poll)

    def _on_signal(self, signum, frame):
        self.shutdown = True

    def _serve(self, port, ae_title, poll, *, channel=None, parent=None, shared=None):
        service = ScpService(port=port, ae_title=ae_title, channel=channel, shared=shared)
        retries_since = timezone.now()
        while not self.shutdown:
            service.step()
            if channel is None:  # one process: it also wakes transfer retries (else the dispatcher does)
                retries_since = wake_due_retries(retries_since)
            deadline = time.monotonic() + poll
            while not self.shutdown and time.monotonic() < deadline:
                time.sleep(0.1)
                if parent is not None and os.getppid() != parent:
                    # The dispatching runscp was killed: stop with it, so that
                    # its replacement starts clean.
                    logger.warning("runscp worker %d: parent %d is gone; stopping", os.getpid(), parent)
                    self.shutdown = True
        service.close()
        return f"runscp (pid {os.getpid()}) stopped: {service.writer.summary()}"

    def _dispatch(self, processes, port, ae_title, poll):
        """Accept on the port in this process and hand connections to
        `processes` forked workers; restart one that dies; stop them all on
        SIGTERM/SIGINT."""
        dispatcher = Dispatcher(
            processes=processes,
            spawn=lambda channel, inherited, shared: self._fork(channel, inherited, shared, port, ae_title, poll),
            load_config=lambda: load_config(port=port, ae_title=ae_title),
        )
        restarts = 0
        next_check = 0.0
        retries_since = timezone.now()
        while not self.shutdown:
            if time.monotonic() >= next_check:
                retries_since = wake_due_retries(retries_since)
                gone = dispatcher.reap()
                restarts += gone
                if len(dispatcher.workers) < processes:
                    if gone:
                        time.sleep(1)  # do not spin on a worker that dies at once
                    dispatcher.start_workers()
                dispatcher.follow_settings()
                next_check = time.monotonic() + poll
            dispatcher.hand_over(0.2)
        dispatcher.stop()
        for pid, _ in dispatcher.workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        _wait_for_workers([pid for pid, _ in dispatcher.workers], timeout=WORKER_STOP_TIMEOUT)
        return f"runscp stopped ({processes} processes, {dispatcher.handed_over} connections, {restarts} restarts)"

    def _fork(self, channel, inherited, shared, port, ae_title, poll):
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        # Child: a fresh process with its own connections and threads; it
        # must not keep the port or the other workers' channels open.
        code = 0
        try:
            for sock in inherited:
                sock.close()
            if self.cpu_affinity == "auto":
                affinity.pin_worker(shared[1])  # before this process starts a thread: they inherit it
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            message = self._serve(port, ae_title, poll, channel=channel, parent=parent, shared=shared)
            logger.info(message)
        except BaseException:
            logger.exception("runscp worker failed")
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)
