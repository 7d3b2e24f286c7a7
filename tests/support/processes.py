"""Processes and sockets for the tests: free ports, waiting for a condition,
DCMTK tools, and the listeners a test starts (`manage.py runscp`, `runmllp`,
`qcluster`) with their logs and their stop.

Personas: `MODALITY` (a CT scanner that stores to us), `STRANGER` (an AE
title nobody configured).
"""

import os
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


def stored_files(data_dir):
    root = Path(data_dir) / "storage"
    return sorted(p for p in root.glob("*/*/*") if p.is_file() and not p.name.startswith("."))


def temp_files(data_dir):
    return sorted((Path(data_dir) / "storage").glob("*/*/.*.tmp"))


class RunningProcess:
    """A listener started by a test (`manage.py runscp`, `runmllp`): its log and its stop."""

    def log(self):
        return self.log_path.read_text(errors="replace")

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


@dataclass
class RunningMllp(RunningProcess):
    port: int
    proc: subprocess.Popen
    log_path: Path
    stopped: bool = field(default=False)

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
