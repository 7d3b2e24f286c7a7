"""A process of its own for every running transfer job.

`jobs.run_next()` (the dispatcher: a django-q2 task, `manage.py dicom
send|retrieve`, the bench) claims jobs and hands each one to `JobProcesses.
start()`, which forks a child that runs the job and exits.  Why processes,
and why fork:

- a job is Python under one GIL per process (C-GET stores and indexes every
  instance, a send walks its rows and frames its PDVs), so four jobs as
  threads of one process used one core of two (issue 14: ×4 sends gained
  little over ×1);
- fork starts a child in about a millisecond with Django, the settings and
  the imports already loaded, where a new interpreter takes a second; the
  dispatcher closes its database connections first, so the child opens its
  own and never shares a socket or a SQLite file handle with its parent;
- the dispatcher learns at once that a child died (a pidfd per child, which
  `select` waits on), so a job whose process was killed goes back to the
  queue now, not after the 60 s heartbeat time-out (`queue.requeue_stale`
  still covers a dispatcher that died with its children);
- the number of django-q2 workers does not matter: one dispatcher forks up
  to "maximum outgoing connections" children, and `queue.claim_due` keeps
  that limit across every dispatcher of every process.

C-GET jobs are the exception: they run in threads of the dispatcher, as
every job did before.  A C-GET stores and indexes each instance it receives,
and waits for the index commit before it answers; that commit's fsync is the
cost, and one index writer per process groups the commits of all the jobs in
it.  Four C-GET jobs in four processes had four writers committing one by
one: in alternating runs of bench/transfer.py ("jobs" column, fsync on), get
small×4 made 208 and 195 inst/s in processes against 342 and 270 as
threads, get large×4 175 against 221 and 192; with fsync off both were even
(224 / 221 and 156 / 143).  Sends gained (docs/architecture.md).  Measured
again once the index writer stopped syncing at every commit (two alternating
rounds of `bench/transfer.py --ops get --only pacs`, fsync on, inst/s as
threads / as processes): small×1 596, 486 / 496, 371; small×4 813, 767 /
741, 598; large×1 330, 332 / 336, 265; large×4 532, 425 / 462, 461.

A child asks the kernel to end it when its dispatcher ends (Linux
PR_SET_PDEATHSIG), so stopping the worker does not leave jobs running
unwatched: their rows go stale and are queued again.
"""

import ctypes
import logging
import os
import select
import signal
import socket
import sys
import threading
from dataclasses import dataclass

from django.db import connections

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def process_name(pid=None):
    """The `worker` of a job run by process `pid` (default: this one)."""
    return f"{socket.gethostname()[:30]}:{pid or os.getpid()}"


@dataclass
class Child:
    pid: int | None  # None: a thread of the dispatcher
    job_pk: int
    pidfd: int | None
    thread: threading.Thread | None = None
    done: threading.Event | None = None


class JobProcesses:
    """The children of one dispatcher: start, wait for one to end, reap.
    C-GET jobs run in threads of the dispatcher instead (`start_thread`)."""

    def __init__(self):
        self.children: dict[int, Child] = {}
        self.threads: list[Child] = []
        self._wake_r, self._wake_w = os.pipe()  # a thread that ends writes a byte
        os.set_blocking(self._wake_r, False)

    def __len__(self):
        return len(self.children) + len(self.threads)

    def close(self):
        if any(not t.done.is_set() for t in self.threads):
            return  # a thread still to write its byte keeps the pipe (a dispatcher that failed)
        os.close(self._wake_r)
        os.close(self._wake_w)

    def start_thread(self, job, target):
        """Run `target(job)` in a thread of this process."""

        done = threading.Event()

        def run():
            try:
                target(job)
            finally:
                done.set()
                os.write(self._wake_w, b"x")

        thread = threading.Thread(target=run, name=f"transfer-{job.pk}", daemon=True)
        self.threads.append(Child(None, job.pk, None, thread, done))
        thread.start()

    def start(self, job, target):
        """Fork a child that runs `target(job)` and exits (status 0, or 1
        when `target` raised).  Returns the child's pid."""
        connections.close_all()  # the child opens its own (see the module docstring)
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                self._become_child(parent, job)
                target(job)
                code = 0
            except BaseException:
                logger.exception("transfer job %s: its process failed", job.pk)
            finally:
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(code)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux ≥ 5.3: `wait` polls
            pidfd = None
        self.children[pid] = Child(pid, job.pk, pidfd)
        return pid

    def _become_child(self, parent, job):
        for child in self.children.values():  # the siblings' pidfds are the parent's business
            if child.pidfd is not None:
                os.close(child.pidfd)
        self.children, self.threads = {}, []
        self.close()
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # django-q2's task time-out is the dispatcher's
        signal.alarm(0)
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
        if os.getppid() != parent:  # the dispatcher ended before prctl
            os._exit(1)
        try:
            import setproctitle

            setproctitle.setproctitle(f"pacs transfer job {job.pk}")
        except ImportError:
            pass

    def wait(self, timeout):
        """Wait up to `timeout` seconds for a child to end; the children
        that ended, as (Child, wait status); a thread's status is None."""
        fds = [c.pidfd for c in self.children.values() if c.pidfd is not None]
        if len(fds) < len(self.children):
            timeout = min(timeout, 0.2)  # some children cannot be waited on: poll
        select.select([*fds, self._wake_r], [], [], timeout)
        try:
            os.read(self._wake_r, 4096)  # every byte written so far: the flags below say who
        except BlockingIOError:
            pass
        ended = []
        for child in [t for t in self.threads if t.done.is_set()]:
            self.threads.remove(child)
            child.thread.join()
            ended.append((child, None))
        for pid, child in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: its status is lost
                done, status = pid, 0
            if done:
                del self.children[pid]
                if child.pidfd is not None:
                    os.close(child.pidfd)
                ended.append((child, status))
        return ended


def describe_exit(status):
    """'exited with 1', 'killed by SIGKILL', … for a wait status."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(number).name}"
        except ValueError:
            return f"killed by signal {number}"
    return f"exited with {os.waitstatus_to_exitcode(status)}"
