"""`limits.SharedCounts`: the associations of runscp's worker processes
counted together (the runscp tests in test_runscp_limits.py drive it
through real workers; these check the table itself, across a real fork)."""

import os

from dicomnodes.scp.limits import SharedCounts


def test_counts_of_every_row_add_up_against_both_maximums():
    counts = SharedCounts(rows=2)
    assert counts.admit(0, "10.0.0.1", max_total=3, max_per_address=2) == ""
    assert counts.admit(1, "10.0.0.1", max_total=3, max_per_address=2) == ""
    assert counts.admit(0, "10.0.0.1", max_total=3, max_per_address=2) == (
        "2 associations from 10.0.0.1 already (the maximum per address)"
    )
    assert counts.admit(1, "10.0.0.2", max_total=3, max_per_address=2) == ""
    assert counts.admit(0, "10.0.0.3", max_total=3, max_per_address=2) == "3 associations at once already (the maximum)"
    assert counts.counts() == (1, 2)
    counts.release(1, "10.0.0.1")
    assert counts.admit(0, "10.0.0.1", max_total=3, max_per_address=2) == ""
    assert counts.counts() == (2, 1)


def test_released_slots_are_reused_and_a_full_row_refuses_a_new_address():
    counts = SharedCounts(rows=1)
    limit = dict(max_total=10 * SharedCounts.SLOTS, max_per_address=5)
    groups = [f"10.{i // 250}.{i % 250}.1" for i in range(SharedCounts.SLOTS)]
    for group in groups:
        assert counts.admit(0, group, **limit) == ""
    assert counts.admit(0, "192.168.1.1", **limit).startswith("associations from 1024 addresses")
    assert counts.admit(0, groups[7], **limit) == "", "a known address still fits"
    for group in groups[:100]:
        counts.release(0, group)
    counts.release(0, groups[7])
    for i in range(100):
        assert counts.admit(0, f"172.16.{i}.1", **limit) == ""
    assert counts.counts() == (SharedCounts.SLOTS,)
    assert counts.admit(0, groups[500], **limit) == ""  # found past the reused slots
    assert counts.counts() == (SharedCounts.SLOTS + 1,)


def test_a_forked_worker_counts_in_the_parents_table_and_clear_forgets_its_row():
    counts = SharedCounts(rows=2)
    pid = os.fork()
    if pid == 0:  # the worker: two associations from one address, in row 1
        code = 0 if counts.admit(1, "10.0.0.9", max_total=5, max_per_address=5) == "" else 1
        code |= 0 if counts.admit(1, "10.0.0.9", max_total=5, max_per_address=5) == "" else 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert counts.counts() == (0, 2)
    assert counts.admit(0, "10.0.0.9", max_total=5, max_per_address=2).startswith("2 associations from 10.0.0.9")
    counts.clear(1)
    assert counts.admit(0, "10.0.0.9", max_total=5, max_per_address=2) == ""
    assert counts.counts() == (1, 0)
