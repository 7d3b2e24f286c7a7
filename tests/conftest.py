"""Shared fixtures: a running `runscp`, `runmllp` and `qcluster`, per-test
data folders.  The helpers they use live in tests/support/processes.py.

Personas: `MODALITY` (a CT scanner that stores to us), `STRANGER` (an AE
title nobody configured), `an_admin` (a superuser in the admin).
"""

import subprocess
import sys

import pytest

from tests.support.processes import (
    BASE_DIR,
    QCluster,
    RunningMllp,
    RunningScp,
    free_port,
    port_accepts,
    server_env,
    wait_until,
)


@pytest.fixture
def an_admin(client, django_user_model):
    """Persona: a logged-in superuser (Django test client)."""
    client.force_login(django_user_model.objects.create_superuser("admin", "", None))
    return client


@pytest.fixture
def data_dir(tmp_path, settings):
    """A data folder of this test's own, shared with the servers it starts."""
    root = tmp_path / "data"
    root.mkdir()
    settings.PACS_DATA_DIR = root
    settings.PACS_STORAGE_DIR = root / "storage"
    settings.PACS_QUARANTINE_DIR = root / "quarantine"
    settings.PACS_LOG_DIR = root / "logs"
    from dicomnodes.archive import storage

    storage._made_dirs.clear()
    return root


@pytest.fixture
def start_scp(transactional_db, data_dir, tmp_path):
    """Start `manage.py runscp` on a free port; stopped after the test."""
    started = []

    def start(*, port=None, ae_title=None, processes=1, args=(), wait=True, poll=0.5):
        from dicomnodes.models import DicomServerSettings

        row = DicomServerSettings.load()
        if port is None:
            port = free_port()
            row.port = port
            row.save()
        log_path = tmp_path / f"runscp-{len(started)}.log"
        argv = [
            sys.executable,
            str(BASE_DIR / "manage.py"),
            "runscp",
            "--processes",
            str(processes),
            "--poll",
            str(poll),
        ]
        if ae_title is not None:
            argv += ["--ae-title", ae_title]
        argv += list(args)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=BASE_DIR, env=server_env(data_dir), stdout=log, stderr=subprocess.STDOUT)
        server = RunningScp(port, ae_title or row.ae_title, data_dir, proc, log_path)
        started.append(server)
        if wait and port:
            wait_until(lambda: port_accepts(port) or proc.poll() is not None, 30, message=f"runscp on port {port}")
            assert proc.poll() is None, f"runscp exited early:\n{server.log()}"
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def scp(start_scp):
    return start_scp()


# --- the HL7 listener -------------------------------------------------------------


@pytest.fixture
def start_mllp(transactional_db, data_dir, tmp_path):
    """Start `manage.py runmllp` on a free port (stored in the settings, with
    any other settings given); stopped after the test."""
    started = []

    def start(*, port=None, args=(), wait=True, **stored):
        from worklist.models import WorklistSettings

        row = WorklistSettings.load()
        if port is None:
            port = free_port()
            row.hl7_port = port
        for name, value in stored.items():
            setattr(row, name, value)
        row.save()
        log_path = tmp_path / f"runmllp-{len(started)}.log"
        argv = [sys.executable, str(BASE_DIR / "manage.py"), "runmllp", "--poll", "0.5", *args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, cwd=BASE_DIR, env=server_env(data_dir), stdout=log, stderr=subprocess.STDOUT)
        server = RunningMllp(port, proc, log_path)
        started.append(server)
        if wait and port:
            text = f"listening on port {port}"
            wait_until(lambda: text in server.log() or proc.poll() is not None, 30, message=f"runmllp on port {port}")
            assert proc.poll() is None, f"runmllp exited early:\n{server.log()}"
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def mllp(start_mllp):
    return start_mllp()


# --- django-q2 -------------------------------------------------------------------------------------


@pytest.fixture
def qcluster(transactional_db, data_dir, tmp_path):
    """Start `manage.py qcluster` (the django-q2 worker); stopped after the test."""
    started = []

    def start():
        worker = QCluster(data_dir, tmp_path / f"qcluster-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
