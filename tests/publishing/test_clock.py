"""publishing.clock (runs in runscp): a delayed job's submission is queued
at its due time, once, and only for the latest due time of the job (its
robot status reads: tests/publishing/test_end_to_end.py)."""

import time
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.models import OrmQ

from publishing import clock, queueing
from tests.support.processes import wait_until


@pytest.fixture
def running_clock(transactional_db):
    clock.enable(robot_poll=0.2)
    yield clock
    clock.disable()


def queued_submits():
    return [q.task["args"] for q in OrmQ.objects.all() if q.task["func"] == queueing.SUBMIT_TASK]


def test_a_pushed_due_time_fires_once_at_the_latest_time(running_clock):
    now = timezone.now()
    assert running_clock.arm(41, now + timedelta(seconds=0.4))
    assert running_clock.arm(41, now + timedelta(seconds=1.2))  # a second series pushed it
    assert running_clock.arm(42, now + timedelta(seconds=0.2))
    time.sleep(0.8)
    assert queued_submits() == [(42,)]  # 41's first time was superseded
    assert running_clock.pending() == {41: now + timedelta(seconds=1.2)}
    wait_until(lambda: len(queued_submits()) == 2, 5, 0.05, "the second submission")
    assert sorted(queued_submits()) == [(41,), (42,)]
    assert running_clock.pending() == {}


def test_processes_that_did_not_enable_it_rely_on_the_schedule(transactional_db):
    assert clock.arm(43, timezone.now()) is False
    time.sleep(0.3)
    assert queued_submits() == []
