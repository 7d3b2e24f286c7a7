"""Processes and sockets for the tests: free ports, waiting for a condition,
DCMTK tools, and the listeners a test starts (`manage.py runscp`, `runmllp`,
`qcluster`) with their logs and their stop.

Personas: `MODALITY` (a CT scanner that stores to us), `STRANGER` (an AE
title nobody configured).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parent.parent.parent
MODALITY = "MODALITY1"
STRANGER = "STRANGER"
MLLP_SEND = Path(sys.executable).parent / "mllp_send"  # python-hl7's MLLP client
# Seconds between settings polls of the listeners tests start: a change a
# test waits for applies within this.
POLL = 0.2


def peak_rss_mb(pid):
    """VmHWM (the peak resident set) of a process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        kb = int(re.search(r"^VmHWM:\s+(\d+) kB", status.read(), re.MULTILINE).group(1))
    return kb / 1024


def free_port():
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        return s.getsockname()[1]


def port_accepts(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout=20.0, interval=0.1, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {message}")


def dcmtk(tool, *args, timeout=120, check=False):
    """Run a DCMTK tool with Nagle off (PEERS.md); returns CompletedProcess."""
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} is not installed: README's test command installs Debian's dcmtk")
    env = dict(os.environ, TCP_NODELAY="1")
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def database_url():
    """The test database, as a URL another process can use."""
    from django.db import connection

    sd = connection.settings_dict
    if sd["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{sd['NAME']}"
    auth = sd["USER"] or ""
    if sd.get("PASSWORD"):
        auth += f":{sd['PASSWORD']}"
    return f"postgres://{auth}@{sd['HOST'] or '127.0.0.1'}:{sd['PORT'] or 5432}/{sd['NAME']}"


def server_env(data_dir, **extra):
    from django.conf import settings

    env = dict(os.environ)
    env.update(
        # The same key as this process: django-q2 signs the tasks it queues.
        SECRET_KEY=settings.SECRET_KEY,
        PACS_DATA_DIR=str(data_dir),
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="pacs_site.settings",
        PYTHONUNBUFFERED="1",
        TCP_NODELAY="1",
    )
    env.update(extra)
    return env


def point_settings_at(settings, root):
    """Make this process read and write the data folder `root` (the one the
    servers it talks to use); `settings` is pytest-django's fixture."""
    settings.PACS_DATA_DIR = root
    settings.PACS_STORAGE_DIR = root / "storage"
    settings.PACS_QUARANTINE_DIR = root / "quarantine"
    settings.PACS_LOG_DIR = root / "logs"
    from dicomnodes.archive import storage

    storage._made_dirs.clear()


def stored_files(data_dir):
    root = Path(data_dir) / "storage"
    return sorted(p for p in root.glob("*/*/*") if p.is_file() and not p.name.startswith("."))


def temp_files(data_dir):
    return sorted((Path(data_dir) / "storage").glob("*/*/.*.tmp"))


class RunningProcess:
    """A listener started by a test (`manage.py runscp`, `runmllp`): its log and its stop.

    `log_start`: where the current test's part of the log begins (a
    listener shared by several tests moves it at each test's start)."""

    log_start = 0

    def log(self):
        return self.log_since(self.log_start)

    def log_offset(self):
        return self.log_path.stat().st_size

    def log_since(self, offset):
        """What the process logged after `offset` (a `log_offset()`)."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def wait_for_log(self, text, timeout=15):
        wait_until(lambda: text in self.log(), timeout, message=f"{text!r} in {self.log_path.name}")

    def stop(self):
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# runscp's log lines (dicomnodes/scp/handlers.py) of an association's life.
_ACCEPTED = re.compile(r"\] association (\S+) from .* accepted$", re.MULTILINE)
_ENDED = re.compile(r"\] association (\S+) (?:released|aborted): ", re.MULTILINE)
_RECORDED = re.compile(r"\] association (\S+): recorded, ", re.MULTILINE)  # the index writer, after its hooks
_REJECTED = re.compile(r"\] association from .* rejected: ", re.MULTILINE)


_SERVICES = {
    "find": "StudyRootQueryRetrieveInformationModelFind",
    "move": "StudyRootQueryRetrieveInformationModelMove",
    "get": "StudyRootQueryRetrieveInformationModelGet",
    "mwl": "ModalityWorklistInformationFind",
    "store": "CTImageStorage",
    "echo": "Verification",
}


@dataclass
class RunningScp(RunningProcess):
    port: int
    ae_title: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path
    stopped: bool = field(default=False)

    def echo(self, *, called=None, calling=MODALITY, port=None):
        return dcmtk("echoscu", "-aet", calling, "-aec", called or self.ae_title, "127.0.0.1", port or self.port)

    def store(self, *paths, called=None, calling=MODALITY, options=()):
        args = ["-aet", calling, "-aec", called or self.ae_title, *options, "127.0.0.1", self.port]
        folders = [p for p in paths if Path(p).is_dir()]
        files = [p for p in paths if not Path(p).is_dir()]
        if folders:
            args += ["+sd"]
        return dcmtk("storescu", *args, *folders, *files)

    def qr(self, tool, *keys, calling=MODALITY, root="-S", options=()):
        """Run a DCMTK query/retrieve tool (findscu, movescu, getscu) with `-k` keys."""
        args = [*options, root, "-aet", calling, "-aec", self.ae_title, "127.0.0.1", self.port]
        for key in keys:
            args += ["-k", key]
        return dcmtk(tool, *args)

    def accepts(self, calling, service):
        """Whether runscp accepts an association from `calling` proposing
        `service` ("find", "move", "get", "mwl", "store", "echo")."""
        from pynetdicom import AE, sop_class

        ae = AE(ae_title=calling)
        ae.add_requested_context(getattr(sop_class, _SERVICES[service]))
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
        accepted = assoc.is_established
        if accepted:
            assoc.release()
        return accepted

    def wait_until_allowed(self, calling, service, timeout=10):
        """Wait until runscp, which reads the peers at every poll, lets
        `calling` use `service` (a peer row just saved)."""
        wait_until(lambda: self.accepts(calling, service), timeout, message=f"runscp to let {calling} {service}")

    def wait_for_peers(self):
        """Wait until runscp has read the peers saved so far.  It reads them
        all at each poll, so once a witness peer saved after them is let in,
        so are they (for a peer that, seen from outside, acts like a stranger)."""
        from dicomnodes.models import Peer

        witness = Peer.objects.create(name="witness", ae_title="WITNESS", host="127.0.0.1", may_query=True)
        self.wait_until_allowed(witness.ae_title, "find")
        witness.delete()

    def wait_until_settled(self, since, timeout=30):
        """Wait until every association that began after log offset `since`
        has ended, its AssociationLog row is written and the index writer's
        hooks for it (events, publishing, worklist) have run.  runscp's index
        writer is a thread of its own: the rows land after the peer has its
        answers, and a test sharing this runscp must not leave them to land
        in the next test's database, nor empty the database under a hook
        (on PostgreSQL the flush's TRUNCATE and a hook's INSERT deadlocked)."""
        from dicomnodes.models import AssociationLog, AssociationResult

        def settled():
            text = self.log_since(since)
            accepted = set(_ACCEPTED.findall(text))
            if not accepted <= set(_ENDED.findall(text)) or not accepted <= set(_RECORDED.findall(text)):
                return False
            logged = AssociationLog.objects.filter(pk__in=accepted, ended_at__isnull=False).count()
            rejected = AssociationLog.objects.filter(result=AssociationResult.REJECTED).count()
            return logged == len(accepted) and rejected >= len(_REJECTED.findall(text))

        wait_until(settled, timeout, message=f"runscp's associations to end and be logged:\n{self.log_since(since)}")


def launch_runscp(data_dir, log_path, *, port, ae_title=None, processes=1, poll=POLL, args=(), wait=True):
    """`manage.py runscp` on `port` (the settings' port, unless `args` has
    `--port`), logging to `log_path`; with `wait`, once it accepts."""
    argv = [sys.executable, str(BASE_DIR / "manage.py"), "runscp", "--processes", str(processes), "--poll", str(poll)]
    if ae_title is not None:
        argv += ["--ae-title", ae_title]
    argv += [str(a) for a in args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env=server_env(data_dir), stdout=log, stderr=subprocess.STDOUT)
    server = RunningScp(port, ae_title or "PACS", data_dir, proc, log_path)
    if wait and port:
        wait_until(lambda: port_accepts(port) or proc.poll() is not None, 30, message=f"runscp on port {port}")
        assert proc.poll() is None, f"runscp exited early:\n{server.log()}"
    return server


# runmllp's log lines (worklist/mllp.py) of a connection's life.
_HL7_OPENED = re.compile(r"HL7 connection from \S+$", re.MULTILINE)
_HL7_CLOSED = re.compile(r"HL7 connection from \S+ closed ", re.MULTILINE)


@dataclass
class RunningMllp(RunningProcess):
    port: int
    proc: subprocess.Popen
    log_path: Path
    stopped: bool = field(default=False)

    def wait_until_settled(self, since, timeout=30):
        """Wait until every connection that opened after log offset `since`
        is closed: its messages are answered and their rows written."""

        def settled():
            text = self.log_since(since)
            return len(_HL7_OPENED.findall(text)) == len(_HL7_CLOSED.findall(text))

        wait_until(settled, timeout, message=f"runmllp's connections to close:\n{self.log_since(since)}")

    def mllp_send(self, *messages, port=None, tmp_dir):
        """Send with python-hl7's mllp_send; returns its output (the ACKs)."""
        path = Path(tmp_dir) / f"messages-{time.monotonic_ns()}.hl7"
        path.write_bytes("\r\n".join(messages).encode("latin-1"))
        proc = subprocess.run(
            [str(MLLP_SEND), "--loose", "-f", str(path), "-p", str(port or self.port), "127.0.0.1"],
            capture_output=True,
            timeout=20,
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return proc.stdout


def launch_runmllp(data_dir, log_path, *, port, poll=POLL, args=(), wait=True):
    """`manage.py runmllp` expected on `port`, logging to `log_path`; with
    `wait`, once it listens."""
    argv = [sys.executable, str(BASE_DIR / "manage.py"), "runmllp", "--poll", str(poll), *map(str, args)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=BASE_DIR, env=server_env(data_dir), stdout=log, stderr=subprocess.STDOUT)
    server = RunningMllp(port, proc, log_path)
    if wait and port:
        text = f"listening on port {port}"
        wait_until(lambda: text in server.log() or proc.poll() is not None, 30, message=f"runmllp on port {port}")
        assert proc.poll() is None, f"runmllp exited early:\n{server.log()}"
    return server


class QCluster:
    """`manage.py qcluster` in its own process (the django-q2 worker)."""

    def __init__(self, data_dir, log_path):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(BASE_DIR / "manage.py"), "qcluster"],
                cwd=BASE_DIR,
                env=server_env(data_dir),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
