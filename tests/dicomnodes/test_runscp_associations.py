"""runscp: echo, called/calling AE checks, port 0, overrides, live settings."""

import pytest

from dicomnodes.models import AssociationLog, AssociationResult, DicomServerSettings, Peer
from tests.support.processes import MODALITY, STRANGER, free_port, port_accepts, wait_until


def test_it_answers_echo(shared_scp):
    result = shared_scp.echo()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("suffix", ["_E", "_P", "_TE", "_TP"])
def test_it_answers_to_the_publishing_suffixes(shared_scp, suffix):
    assert shared_scp.echo(called="PACS" + suffix).returncode == 0


def test_it_rejects_unknown_called_ae(shared_scp):
    result = shared_scp.echo(called="NOTPACS")
    assert result.returncode != 0
    assert "Called AE Title Not Recognized" in result.stdout + result.stderr
    wait_until(lambda: AssociationLog.objects.filter(result=AssociationResult.REJECTED).exists())
    row = AssociationLog.objects.get(result=AssociationResult.REJECTED)
    assert row.called_ae == "NOTPACS"
    assert row.calling_ae == MODALITY
    assert row.reason == "called AE title not recognised"


def test_called_ae_is_case_sensitive(shared_scp):
    assert shared_scp.echo(called="pacs").returncode != 0


def test_it_logs_every_association(shared_scp):
    assert shared_scp.echo().returncode == 0
    wait_until(lambda: AssociationLog.objects.filter(result=AssociationResult.RELEASED).exists())
    row = AssociationLog.objects.get()
    assert (row.calling_ae, row.called_ae, row.peer_address) == (MODALITY, "PACS", "127.0.0.1")
    assert row.ended_at is not None and row.duration is not None and row.duration >= 0


def test_port_zero_disables_the_server(start_scp):
    row = DicomServerSettings.load()
    row.port = 0
    row.save()
    server = start_scp(port=0)
    server.wait_for_log("DICOM server disabled")
    assert server.proc.poll() is None, "runscp keeps running while disabled"


def test_command_line_overrides_port_and_ae_title(start_scp):
    port = free_port()
    server = start_scp(port=port, ae_title="OVERRIDE", args=["--port", str(port)])
    assert server.echo(called="OVERRIDE").returncode == 0
    assert server.echo(called="PACS").returncode != 0
    assert DicomServerSettings.load().ae_title == "PACS", "overrides are not saved"


def test_it_refuses_a_bad_ae_title_on_the_command_line(start_scp):
    server = start_scp(ae_title="HAS SPACE", wait=False)
    assert server.proc.wait(30) != 0
    assert "AE title" in server.log()


def test_admin_changes_reach_the_running_server(scp):
    new_port = free_port()
    row = DicomServerSettings.load()
    row.port = new_port
    row.ae_title = "RENAMED"
    row.save()
    wait_until(lambda: port_accepts(new_port), 10, message="rebind on the new port")
    assert scp.echo(called="RENAMED", port=new_port).returncode == 0
    wait_until(lambda: not port_accepts(scp.port), 10, message="old port closed")


def test_unknown_calling_ae_refused_when_policy_is_off(shared_scp):
    # The peer first: runscp may read the new policy at one poll and the
    # peer list at the next (CI saw the stranger refused, then the peer too).
    Peer.objects.create(name="CT scanner", ae_title=MODALITY, host="127.0.0.1", port=104, may_store=True)
    row = DicomServerSettings.load()
    row.unknown_ae_may_echo_and_store = False
    row.save()
    refused = "Calling AE Title Not Recognized"
    wait_until(lambda: refused in (lambda r: r.stdout + r.stderr)(shared_scp.echo(calling=STRANGER)), 10)
    wait_until(lambda: shared_scp.echo(calling=MODALITY).returncode == 0, 10, message="the known peer accepted")


def test_check_host_rejects_a_known_ae_from_another_address(shared_scp):
    row = DicomServerSettings.load()
    row.unknown_ae_may_echo_and_store = False
    row.save()
    Peer.objects.create(name="remote", ae_title=MODALITY, host="192.0.2.200", port=104, check_host=True)
    wait_until(lambda: shared_scp.echo(calling=MODALITY).returncode != 0, 10, message="policy applied")


def test_debug_mode_writes_the_protocol_log(scp):
    row = DicomServerSettings.load()
    row.debug = True
    row.save()
    log = scp.data_dir / "logs" / "dicom-debug.log"
    wait_until(log.exists, 10, message="debug log file")
    assert scp.echo().returncode == 0
    wait_until(lambda: "A-ASSOCIATE-RQ" in log.read_text(errors="replace"), 10, message="PDU dump in the debug log")


def test_worker_processes_take_associations_in_turn(start_scp):
    import re

    scp = start_scp(processes=2)
    for _ in range(4):
        assert scp.echo().returncode == 0
    wait_until(lambda: scp.log().count("released") >= 4, 10, message="four associations logged")
    pids = re.findall(r"\[(\d+)\] association \S+ from", scp.log())
    assert len(set(pids)) == 2, "both workers served associations"
    assert sorted(pids.count(p) for p in set(pids)) == [2, 2]


def _worker_cpus(scp, workers=2):
    """{worker pid: the CPU it says it runs on}, from runscp's log."""
    import re

    line = re.compile(r"runscp worker (\d+) \(slot \d\) runs on CPU (\d+)")
    wait_until(lambda: len(line.findall(scp.log())) >= workers, 10, message="the workers' CPU lines")
    return {int(pid): int(cpu) for pid, cpu in line.findall(scp.log())}


def test_each_worker_process_runs_on_a_cpu_of_its_own(start_scp):
    import os

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip(f"this machine lets the tests use one CPU ({sorted(allowed)}): nothing to choose")
    scp = start_scp(processes=2)
    cpus = _worker_cpus(scp)
    assert sorted(cpus.values()) == sorted(allowed)[:2]
    for pid, cpu in cpus.items():
        assert os.sched_getaffinity(pid) == {cpu}, "the worker and its threads keep to its CPU"
    assert scp.echo().returncode == 0
    assert scp.echo().returncode == 0
    wait_until(lambda: scp.log().count("released") >= 2, 10, message="two associations logged")
    assert os.sched_getaffinity(scp.proc.pid) == allowed, "the dispatcher is not pinned"


def test_cpu_affinity_off_lets_the_workers_move(start_scp):
    import os
    import re

    scp = start_scp(processes=2, args=["--cpu-affinity", "off"])
    for _ in range(2):
        assert scp.echo().returncode == 0
    wait_until(lambda: scp.log().count("released") >= 2, 10, message="two associations logged")
    workers = {int(pid) for pid in re.findall(r"\[(\d+)\] association \S+ from", scp.log())}
    assert len(workers) == 2
    for pid in workers:
        assert os.sched_getaffinity(pid) == os.sched_getaffinity(0)
    assert "runs on CPU" not in scp.log()


def test_the_dispatcher_follows_a_new_port(start_scp):
    scp = start_scp(processes=2)
    new_port = free_port()
    row = DicomServerSettings.load()
    row.port = new_port
    row.save()
    wait_until(lambda: port_accepts(new_port), 10, message="rebind on the new port")
    assert scp.echo(port=new_port).returncode == 0
    wait_until(lambda: not port_accepts(scp.port), 10, message="old port closed")
    row.port = 0
    row.save()
    scp.wait_for_log("DICOM server disabled")
    wait_until(lambda: not port_accepts(new_port), 10, message="port 0 closes the listener")


def test_a_worker_that_dies_is_replaced(start_scp):
    import os
    import re
    import signal

    scp = start_scp(processes=2)
    for _ in range(2):
        assert scp.echo().returncode == 0
    wait_until(lambda: scp.log().count("released") >= 2, 10)
    victim = int(re.findall(r"\[(\d+)\] association \S+ from", scp.log())[0])
    os.kill(victim, signal.SIGKILL)
    scp.wait_for_log(f"runscp worker {victim} ended")
    for _ in range(4):
        assert scp.echo().returncode == 0
    wait_until(lambda: scp.log().count("released") >= 6, 10)
    later = re.findall(r"\[(\d+)\] association \S+ from", scp.log())[2:]
    assert str(victim) not in later
    assert len(set(later)) == 2, "a new worker shares the load"


def test_a_silent_peer_is_dropped_after_the_service_timeout(start_scp):
    import socket
    import time as _time

    row = DicomServerSettings.load()
    row.service_timeout = 2
    row.save()
    scp = start_scp()
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
        started = _time.monotonic()
        data = sock.recv(1024)  # we never send an A-ASSOCIATE-RQ
        waited = _time.monotonic() - started
    assert data == b"" or data[:1] == b"\x07", "closed (or aborted) by the server"
    assert 1.5 <= waited < 6, f"dropped after {waited:.1f} s"
