"""`manage.py runpacs`: the supervisor starts the web server and runscp, restarts
one that dies and stops them all on Ctrl-C."""

import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from dicomnodes.models import DicomServerSettings
from tests.support.processes import BASE_DIR, dcmtk, free_port, port_accepts, server_env, wait_until
from worklist.models import WorklistSettings


def web_answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def echo_works(port):
    return dcmtk("echoscu", "-aec", "PACS", "127.0.0.1", port, timeout=10).returncode == 0


@dataclass
class RunningPacs:
    proc: subprocess.Popen
    web_port: int
    dicom_port: int
    log_path: Path
    seen: dict = field(default_factory=dict)  # pid -> psutil.Process of every child seen

    def children(self):
        kids = psutil.Process(self.proc.pid).children(recursive=True)
        self.seen.update((k.pid, k) for k in kids)
        return kids

    def runscp(self):
        """The runscp child, or None between a crash and its restart."""
        for kid in self.children():
            try:
                if "runscp" in kid.cmdline():
                    return kid
            except psutil.NoSuchProcess:
                pass
        return None

    def is_up(self):
        return web_answers(self.web_port) and echo_works(self.dicom_port)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def kill_everything(self):
        """Teardown: whatever a failed test left running, ours only, by PID."""
        if self.proc.poll() is None:
            self.children()
            self.proc.kill()
            self.proc.wait()
        for kid in self.seen.values():
            try:
                kid.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def runpacs(request, transactional_db, data_dir, tmp_path):
    """`manage.py runpacs` with the web server and runscp on free ports; runscp
    runs one process unless the test parametrizes this fixture (indirect)."""
    dicom_port = free_port()
    web_port = free_port()
    while web_port == dicom_port:
        web_port = free_port()
    row = DicomServerSettings.load()
    row.port = dicom_port
    row.save()
    hl7 = WorklistSettings.load()
    hl7.hl7_port = free_port()
    hl7.save()
    log_path = tmp_path / "runpacs.log"
    env = server_env(data_dir, PACS_WEB_PORT=str(web_port), PACS_SCP_PROCESSES=str(getattr(request, "param", 1)))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "manage.py"), "runpacs"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    pacs = RunningPacs(proc, web_port, dicom_port, log_path)
    try:
        wait_until(lambda: proc.poll() is not None or pacs.is_up(), 30, 0.2, "runpacs web and DICOM ports")
        assert proc.poll() is None, f"runpacs exited early:\n{pacs.log()}"
        yield pacs
    finally:
        pacs.kill_everything()


def test_ctrl_c_stops_runpacs_and_every_child(runpacs):
    children = runpacs.children()
    commands = " ".join(" ".join(kid.cmdline()) for kid in children)
    assert "runscp" in commands and "daphne" in commands and "qcluster" in commands

    runpacs.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 20
    assert runpacs.proc.wait(20) == 0, runpacs.log()
    _, alive = psutil.wait_procs(children, timeout=max(0.1, deadline - time.monotonic()))

    assert alive == []
    assert "did not stop; killing it" not in runpacs.log()
    assert not port_accepts(runpacs.web_port)
    assert not port_accepts(runpacs.dicom_port)


def test_a_killed_runscp_is_restarted(runpacs):
    first = runpacs.runscp()
    first.send_signal(signal.SIGKILL)
    first.wait(5)

    def restarted():
        current = runpacs.runscp()
        return current is not None and current.pid != first.pid and echo_works(runpacs.dicom_port)

    wait_until(restarted, 15, 0.2, "runscp restarted and answering C-ECHO")
    assert "scp exited with -9; restarting" in runpacs.log()
    assert web_answers(runpacs.web_port)


@pytest.mark.parametrize("runpacs", [2], indirect=True)
def test_a_killed_runscp_with_workers_leaves_none_behind(runpacs):
    first = runpacs.runscp()
    workers = first.children()
    assert len(workers) == 2
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    wait_until(lambda: runpacs.runscp() not in (None, first), 15, 0.2, "runscp restarted")

    runpacs.proc.send_signal(signal.SIGINT)
    runpacs.proc.wait(20)
    _, alive = psutil.wait_procs(workers, timeout=3)

    assert alive == []
    assert not port_accepts(runpacs.dicom_port)
