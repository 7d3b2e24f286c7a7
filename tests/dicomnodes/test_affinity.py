"""runscp's workers each on a CPU of their own (`scp/affinity.py`)."""

import os

import pytest
from django.core.management import CommandError, call_command

from dicomnodes.scp import affinity


def test_each_slot_gets_the_next_allowed_cpu_and_slots_wrap():
    assert [affinity.cpu_for(slot, {0, 1, 2, 3}) for slot in range(4)] == [0, 1, 2, 3]
    # runscp restricted by taskset or a cpuset: only those CPUs, in order
    assert [affinity.cpu_for(slot, {5, 2}) for slot in range(5)] == [2, 5, 2, 5, 2]


def test_one_cpu_leaves_nothing_to_choose():
    assert affinity.cpu_for(0, {3}) is None
    assert affinity.cpu_for(1, {3}) is None


def test_the_environment_chooses_the_mode():
    assert affinity.mode_from_env({}) == "auto"
    assert affinity.mode_from_env({"PACS_SCP_CPU_AFFINITY": " OFF "}) == "off"
    with pytest.raises(ValueError, match="PACS_SCP_CPU_AFFINITY='always'"):
        affinity.mode_from_env({"PACS_SCP_CPU_AFFINITY": "always"})


def test_runscp_refuses_an_unknown_mode_before_it_starts(monkeypatch, db):
    monkeypatch.setenv("PACS_SCP_CPU_AFFINITY", "sometimes")
    with pytest.raises(CommandError, match="PACS_SCP_CPU_AFFINITY='sometimes': use one of auto, off"):
        call_command("runscp", port=0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity on this platform")
def test_pinning_a_process_keeps_it_and_its_new_threads_on_that_cpu():
    import threading

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip(f"this machine lets the tests use one CPU ({sorted(allowed)}): nothing to choose")
    seen = {}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child pins itself, then starts a thread, as a worker does
        code = 1
        try:
            cpu = affinity.pin_this_process(1)
            thread = threading.Thread(target=lambda: seen.update(thread=os.sched_getaffinity(0)))
            thread.start()
            thread.join()
            code = 0 if seen["thread"] == os.sched_getaffinity(0) == {cpu} else 2
            os.write(write, str(cpu).encode())
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    cpu = int(os.read(read, 16))
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0, "the child and its new thread keep to one CPU"
    assert cpu == sorted(allowed)[1]
    assert os.sched_getaffinity(0) == allowed, "only the pinned process is pinned"


def test_a_worker_that_may_not_choose_its_cpu_says_so_and_runs_on(monkeypatch, caplog):
    # A sandbox's refusal cannot be made on demand: sched_setaffinity is replaced.
    def refuse(pid, cpus):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    assert affinity.pin_worker(0) is None
    assert "cannot keep to one CPU: [Errno 1] Operation not permitted" in caplog.text
