"""Shared fixtures: a running `runscp`, `runmllp` and `qcluster`, per-test
data folders.  The helpers they use live in tests/support/processes.py.

Personas: `MODALITY` (a CT scanner that stores to us), `STRANGER` (an AE
title nobody configured), `an_admin` (a superuser in the admin).
"""

import pytest
from django.core.management import call_command

from tests.support.processes import (
    POLL,
    QCluster,
    free_port,
    launch_runmllp,
    launch_runscp,
    point_settings_at,
    wait_until,
)


@pytest.fixture(autouse=True)
def _index_writer_stopped():
    """A C-GET job run in the test's own process starts that process's index
    writer (dicomnodes/transfers/retrieve.py); it is stopped after the test,
    as a job's process stops it before it ends.  Left running, its thread
    kept a database session open past the run (PostgreSQL then refused to
    drop the test database) and its cache across tests."""
    yield
    from dicomnodes.transfers.retrieve import stop_index_writer

    stop_index_writer()


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
    point_settings_at(settings, root)
    return root


def flush_database(django_db_blocker):
    """Empty the test database as a transactional test's teardown does."""
    with django_db_blocker.unblock():
        call_command("flush", verbosity=0, interactive=False, reset_sequences=False)


# --- the DICOM server -------------------------------------------------------------


@pytest.fixture
def start_scp(transactional_db, data_dir, tmp_path):
    """Start `manage.py runscp` on a free port (saved in the settings); stopped after the test."""
    started = []

    def start(*, port=None, ae_title=None, processes=1, args=(), wait=True, poll=POLL):
        from dicomnodes.models import DicomServerSettings

        row = DicomServerSettings.load()
        if port is None:
            port = free_port()
            row.port = port
            row.save()
        log_path = tmp_path / f"runscp-{len(started)}.log"
        server = launch_runscp(
            data_dir, log_path, port=port, ae_title=ae_title, processes=processes, poll=poll, args=args, wait=wait
        )
        server.ae_title = ae_title or row.ae_title
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def scp(start_scp):
    """A runscp of this test's own: for tests that change its settings,
    restart it, or count what is in its folders or its log."""
    return start_scp()


@pytest.fixture(scope="module")
def module_scp(django_db_setup, django_db_blocker, tmp_path_factory):
    """One `manage.py runscp` for the tests of a module that only talk to it
    (through `shared_scp`).

    1. Its port and AE title are command-line overrides: each test's flush
       deletes the settings row, which runscp reads at every poll; without
       them it would fall back to port 11112 and rebind.
    2. Its data folder is the module's: files stored and quarantined pile up
       over the module's tests (each test sends its own UIDs).
    3. Once it stopped, the database is flushed again: it may have written a
       settings row since the last test's flush.
    """
    root = tmp_path_factory.mktemp("runscp")
    data = root / "data"
    data.mkdir()
    port = free_port()
    server = launch_runscp(data, root / "runscp.log", port=port, ae_title="PACS", args=["--port", port])
    yield server
    server.stop()
    flush_database(django_db_blocker)


@pytest.fixture
def shared_scp(module_scp, transactional_db, settings):
    """The module's runscp, for a test that only talks to it.

    1. This process reads and writes the runscp's data folder (do not also
       ask for `data_dir`).
    2. The database is this test's (flushed after it, as with `scp`); the test
       starts once runscp has read it: the flush deleted the settings row,
       and runscp's next poll writes it back as it reads the settings and the
       peers (one step of its loop).
    3. Its `log()` is what it logged during this test.
    4. The test ends once every association it opened is over and logged.
    """
    from dicomnodes.models import DicomServerSettings

    point_settings_at(settings, module_scp.data_dir)
    wait_until(
        lambda: DicomServerSettings.objects.filter(pk=1).exists(), 10, message="runscp to read the fresh database"
    )
    since = module_scp.log_start = module_scp.log_offset()
    yield module_scp
    module_scp.wait_until_settled(since)


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
        server = launch_runmllp(data_dir, tmp_path / f"runmllp-{len(started)}.log", port=port, args=args, wait=wait)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def mllp(start_mllp):
    """A runmllp of this test's own: for tests that change its settings or stop it."""
    return start_mllp()


@pytest.fixture(scope="module")
def module_mllp(django_db_setup, django_db_blocker, tmp_path_factory):
    """One `manage.py runmllp` for the tests of a module that only send it
    messages (through `shared_mllp`); its port is a command-line override,
    as `module_scp`'s, and the database is flushed once it stopped."""
    root = tmp_path_factory.mktemp("runmllp")
    data = root / "data"
    data.mkdir()
    port = free_port()
    server = launch_runmllp(data, root / "runmllp.log", port=port, args=["--port", port])
    yield server
    server.stop()
    flush_database(django_db_blocker)


@pytest.fixture
def shared_mllp(module_mllp, transactional_db):
    """The module's runmllp, for a test that only sends it messages (with
    the default settings): the database is this test's, its `log()` is
    what it logged during this test, and the test ends once every
    connection it opened is closed."""
    since = module_mllp.log_start = module_mllp.log_offset()
    yield module_mllp
    module_mllp.wait_until_settled(since)


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
