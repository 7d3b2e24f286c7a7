"""runscp under connections that never finish: idle and trickling sockets,
over-long PDUs, too many associations, and SIGTERM while all that goes on.

Each test has its own runscp (`start_scp`), whose settings it sets first.
"""

import os
import resource
import signal
import socket
import struct
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomnodes.models import AssociationLog, AssociationResult, DicomServerSettings, Instance
from tests.support.dicomdata import make_ct
from tests.support.processes import MODALITY, wait_until


def _settings(**values):
    row = DicomServerSettings.load()
    for name, value in values.items():
        setattr(row, name, value)
    row.save()


def _children(pid):
    tasks = Path(f"/proc/{pid}/task")
    found = set()
    for task in tasks.iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _open_files(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _raise_open_file_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"this test opens {needed} sockets; ulimit -n allows {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _associated_once_admitted(ae, port, timeout, message):
    """An association to runscp, asked for again until one is accepted."""
    again = []

    def associated():
        assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
        if assoc.is_established:
            again.append(assoc)
        return bool(again)

    wait_until(associated, timeout, message=message)
    return again[0]


def _gone(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_a_thousand_connections_holding_one_byte_neither_keep_a_modality_out_nor_stop_sigterm(start_scp, tmp_path):
    """1,100 connections each send the first byte of a PDU and nothing
    more; a modality still stores, runscp's open files stay bounded, and
    SIGTERM stops the dispatcher and its workers within 10 s."""
    _raise_open_file_limit(1100 + 200)
    _settings(max_associations=100, service_timeout=60)
    scp = start_scp(processes=2)
    workers = _children(scp.proc.pid)
    assert len(workers) == 2
    held = []
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", scp.port), timeout=5)
            sock.sendall(b"\x01")
            held.append(sock)
        result = scp.store(make_ct(tmp_path / "ct.dcm"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert Instance.objects.count() == 1
        # Each worker holds at most its 100 waiting connections (plus its
        # database, log and channel), not one per idle connection.
        wait_until(lambda: all(_open_files(pid) < 250 for pid in workers), 10, message="idle connections closed")
        assert "closed to make room" in scp.log()

        started = time.monotonic()
        scp.proc.send_signal(signal.SIGTERM)
        scp.proc.wait(timeout=10)
        assert time.monotonic() - started < 10
        wait_until(lambda: all(_gone(pid) for pid in workers), 2, message="the workers to end")
    finally:
        for sock in held:
            sock.close()


def test_a_pdu_trickled_one_byte_at_a_time_is_cut_off_after_the_service_timeout(start_scp):
    """The service time-out bounds a whole PDU, not each read: a byte every
    half second does not keep the connection open."""
    _settings(service_timeout=2)
    scp = start_scp()
    sock = socket.create_connection(("127.0.0.1", scp.port), timeout=10)
    started = time.monotonic()
    sock.sendall(struct.pack(">BBL", 0x01, 0, 200))  # an A-ASSOCIATE-RQ of 200 bytes, to come
    closed = False
    for _ in range(40):
        try:
            sock.sendall(b"\x00")
        except OSError:
            closed = True
            break
        time.sleep(0.5)  # the trickle itself: one byte per half second
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                closed = True
                break
        except BlockingIOError:
            pass
        finally:
            sock.setblocking(True)
    elapsed = time.monotonic() - started
    sock.close()
    assert closed, "runscp still reads the trickle after 20 s"
    assert elapsed < 6, f"closed after {elapsed:.1f} s; the service time-out is 2 s"
    assert scp.echo().returncode == 0


def test_a_pdu_longer_than_runscp_accepts_closes_the_connection_at_once(start_scp):
    """A stated length of nearly 4 GB is refused when read, not buffered."""
    scp = start_scp()
    sock = socket.create_connection(("127.0.0.1", scp.port), timeout=10)
    sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 4096)
    sock.settimeout(5)
    answer = b""
    while chunk := sock.recv(64):  # a time-out here fails the test: the connection must close
        answer += chunk
    # An A-ABORT (PS3.8 9.3.8: source 2, invalid PDU parameter value), then the end.
    assert answer == bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6]), answer
    sock.close()
    assert scp.echo().returncode == 0


# With two processes the dispatcher hands connections to its workers in
# turn, so the first two associations run in different processes: the
# maximums must hold for them together.
@pytest.mark.parametrize("processes", [1, 2])
def test_associations_beyond_the_per_address_maximum_are_rejected_as_transient(start_scp, processes):
    _settings(max_associations_per_address=2)
    scp = start_scp(processes=processes)
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(Verification)
    first = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    second = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    try:
        assert first.is_established and second.is_established
        # The third asks with DCMTK's echoscu, not pynetdicom: a pynetdicom
        # requestor whose thread is slower than its DUL's sees the
        # A-ASSOCIATE-RJ close the connection before it checks the connection
        # and calls that an abort (acse._negotiate_as_requestor,
        # `socket._is_connected`); under CI load it did, 1 run in 6.
        third = scp.echo()
        assert third.returncode != 0
        said = third.stdout + third.stderr
        assert "Association Rejected" in said and "Rejected Transient" in said, said
        assert "Local Limit Exceeded" in said and "Service Provider (Presentation Related)" in said, said
    finally:
        first.release()
    # The place is free once runscp has ended the first association (a
    # moment after the release answer).
    again = _associated_once_admitted(ae, scp.port, 10, "a place freed by a release taken again")
    try:
        assert again.send_c_echo().Status == 0x0000
    finally:
        again.release()
        second.release()
    refusals = AssociationLog.objects.filter(result=AssociationResult.REJECTED, reason__contains="local limit")
    wait_until(refusals.exists, 10, message="the refusal in the association log")


@pytest.mark.parametrize("processes", [1, 2])
def test_associations_beyond_the_total_maximum_are_rejected_and_echo_works_again_after(start_scp, processes):
    _settings(max_associations=1)
    scp = start_scp(processes=processes)
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(Verification)
    held = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    try:
        assert held.is_established
        assert scp.echo().returncode != 0, "a second association is over the maximum"
    finally:
        held.release()
    wait_until(lambda: scp.echo().returncode == 0, 10, message="echo once the first association is over")


def test_the_associations_of_a_killed_worker_stop_counting(start_scp):
    _settings(max_associations=2)
    scp = start_scp(processes=2)
    workers = _children(scp.proc.pid)
    assert len(workers) == 2
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", scp.port, ae_title="PACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert scp.echo().returncode != 0, "two associations are the maximum"
        os.kill(min(workers), signal.SIGKILL)  # one of the two associations dies with it
        # Its replacement starts with a clean count: one association (the
        # other worker's) runs, so one more is admitted.
        _associated_once_admitted(ae, scp.port, 20, "a place freed by the killed worker taken again").release()
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
