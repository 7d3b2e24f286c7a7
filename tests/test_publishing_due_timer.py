"""publishing.due_timer: runscp's timer queues a delayed job's submission
at its due time, once, and only for the latest due time of the job."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from publishing import due_timer, tasks


@pytest.fixture
def timer(transactional_db, monkeypatch):
    monkeypatch.setattr(due_timer, "_enabled", True)
    yield due_timer
    monkeypatch.setattr(due_timer, "_enabled", False)


def queued_submits():
    return [q.task["args"] for q in OrmQ.objects.all() if q.task["func"] == tasks.SUBMIT_TASK]


def test_a_pushed_due_time_fires_once_at_the_latest_time(timer):
    now = timezone.now()
    assert timer.arm(41, now + timedelta(seconds=0.4))
    assert timer.arm(41, now + timedelta(seconds=1.2))  # a second series pushed it
    assert timer.arm(42, now + timedelta(seconds=0.2))
    time.sleep(0.8)
    assert queued_submits() == [(42,)]  # 41's first time was superseded
    assert timer.pending() == {41: now + timedelta(seconds=1.2)}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(queued_submits()) < 2:
        time.sleep(0.05)
    assert sorted(queued_submits()) == [(41,), (42,)]
    assert timer.pending() == {}


def test_processes_that_did_not_enable_it_rely_on_the_schedule(transactional_db):
    assert due_timer.arm(43, timezone.now()) is False
    time.sleep(0.3)
    assert queued_submits() == []
