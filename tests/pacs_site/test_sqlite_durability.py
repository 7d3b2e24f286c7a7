"""SQLite syncs its WAL at every commit (synchronous=FULL): an instance
answered Success survives a power cut, as its fsynced file does."""

import subprocess
import sys

import pytest
from django.db import connection

from tests.support.processes import BASE_DIR, server_env

PRINT_SYNCHRONOUS = (
    "from django.db import connection; c = connection.cursor(); c.execute('PRAGMA synchronous'); "
    "print('synchronous', c.fetchone()[0])"
)


def synchronous_of_a_process(tmp_path, **env):
    environment = server_env(tmp_path / "data", **env)
    environment.pop("DATABASE_URL")
    return subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "shell", "-c", PRINT_SYNCHRONOUS],
        cwd=BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.django_db
def test_every_connection_syncs_each_commit():
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 2  # FULL
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_normal_is_a_deliberate_choice(tmp_path):
    result = synchronous_of_a_process(tmp_path, PACS_SQLITE_SYNCHRONOUS="normal")
    assert result.returncode == 0, result.stderr
    assert "synchronous 1" in result.stdout


def test_an_unknown_synchronous_mode_is_refused(tmp_path):
    result = synchronous_of_a_process(tmp_path, PACS_SQLITE_SYNCHRONOUS="OFF")
    assert result.returncode != 0
    assert "PACS_SQLITE_SYNCHRONOUS='OFF' is not one of FULL, NORMAL" in result.stderr
