"""The raw SQL of the ingest hot path (dicomnodes/archive/rawsql.py): the
connection it runs on, and its transaction."""

import asyncio
import sqlite3
import threading

import pytest
from django.db import connections

from dicomnodes.archive import rawsql
from dicomnodes.archive.rawsql import thread_connection
from dicomnodes.models import Patient

pytestmark = pytest.mark.archive


def test_the_thread_connection_is_djangos_in_and_out_of_an_event_loop(monkeypatch):
    """Kept per thread outside a running loop; inside one (the browser
    tests' Playwright, DJANGO_ALLOW_ASYNC_UNSAFE) Django's connection is a
    context variable's, and so is ours."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    outside = thread_connection()

    async def inside():
        return thread_connection(), connections["default"]

    ours, djangos = asyncio.run(inside())

    assert outside is connections["default"]
    assert ours is djangos and ours is not outside
    assert thread_connection() is outside


def test_each_thread_has_its_own_connection():
    seen = {}

    def look():
        seen["other"] = thread_connection()
        seen["django"] = connections["default"]
        connections["default"].close()

    worker = threading.Thread(target=look)
    worker.start()
    worker.join()

    assert seen["other"] is seen["django"] and seen["other"] is not thread_connection()


def test_a_raw_transaction_commits_or_rolls_back_everything(transactional_db):
    patient = Patient.objects.create(patient_id="P1")
    with rawsql.transaction():
        rawsql.increment(Patient, patient.pk, num_studies=1)
    with rawsql.transaction() as done:
        rawsql.increment(Patient, patient.pk, num_studies=10)
        done.roll_back()
    with pytest.raises(RuntimeError, match="after"), rawsql.transaction():
        rawsql.increment(Patient, patient.pk, num_studies=100)
        raise RuntimeError("after the update")

    patient.refresh_from_db()
    assert patient.num_studies == 1


def test_a_raw_transaction_refuses_to_run_inside_djangos(db):
    with pytest.raises(RuntimeError, match="atomic"), rawsql.transaction():
        pass


def test_a_raw_transaction_takes_the_write_lock_at_begin_as_djangos_do(transactional_db):
    """SQLite: BEGIN IMMEDIATE, as Django's atomic() (transaction_mode).  A
    deferred BEGIN reads first and upgrades at its first write, and in WAL
    mode that upgrade fails at once ("database is locked", no busy wait)
    when another process committed since the read: an index batch lost
    under load (bench/query.py, four storescu into two runscp processes)."""
    wrapper = rawsql.opened_connection()
    if wrapper.vendor != "sqlite":
        pytest.skip("PostgreSQL takes row locks as it writes; BEGIN has no mode to match")
    other = sqlite3.connect(wrapper.settings_dict["NAME"], timeout=0, isolation_level=None)
    try:
        with rawsql.transaction():
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # the write lock is ours already, before any statement
        other.execute("BEGIN IMMEDIATE")  # and let go at COMMIT
        other.execute("ROLLBACK")
    finally:
        other.close()
