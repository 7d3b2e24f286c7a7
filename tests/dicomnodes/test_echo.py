"""C-ECHO as a client (`dicomnodes.transfers.echo`), against a running runscp and
against sockets that misbehave on purpose.

Personas: `MODALITY` (a peer runscp knows), `STRANGER` (an AE title nobody
configured).
"""

import socket
import time

import pytest

from dicomnodes.models import DicomServerSettings, Peer
from dicomnodes.transfers.echo import echo, echo_many
from tests.support.processes import MODALITY, STRANGER, free_port, wait_until


@pytest.fixture
def unknown_callers_refused(shared_scp):
    row = DicomServerSettings.load()
    row.unknown_ae_may_echo_and_store = False
    row.save()
    Peer.objects.create(name="CT scanner", ae_title=MODALITY, host="127.0.0.1", port=104)
    # runscp reloads who may associate within its poll interval (0.5 s here).
    wait_until(lambda: shared_scp.echo(calling=STRANGER).returncode != 0, 10, message="runscp to refuse strangers")
    return shared_scp


@pytest.fixture
def silent_listener():
    """A port that accepts TCP connections and never says a word."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def full_listener():
    """A port whose accept queue is full: new connections hang (SYNs dropped)."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as server:
        port = server.getsockname()[1]
        held = []
        # Linux queues backlog + 1 connections; fill the queue.
        while True:
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=0.3))
            except TimeoutError:
                break
        yield port
        for sock in held:
            sock.close()


def test_it_answers_ok_with_a_round_trip_time(shared_scp):
    result = echo("127.0.0.1", port=shared_scp.port, ae_title=shared_scp.ae_title)
    assert result.ok, result.message
    assert 0 < result.round_trip_ms < 1000
    assert result.message == f"echo OK in {result.round_trip_ms:.1f} ms"


def test_it_uses_the_peer_row_for_host_port_and_called_ae(shared_scp):
    scp = shared_scp
    peer = Peer.objects.create(name="Our own runscp", ae_title=scp.ae_title, host="localhost", port=scp.port)
    assert echo(peer).ok


def test_it_reports_a_refused_connection_on_a_port_nobody_listens_on(db):
    port = free_port()
    result = echo("127.0.0.1", port=port, ae_title="PACS", timeout=5)
    assert not result.ok
    assert result.round_trip_ms is None
    assert result.message == f"connection refused: nothing listens on 127.0.0.1:{port}"


def test_it_reports_an_unknown_host(db):
    result = echo("no-such-host.invalid", port=104, ae_title="PACS", timeout=5)
    assert not result.ok
    assert result.message.startswith("host no-such-host.invalid unknown")


def test_it_reports_that_runscp_does_not_know_our_calling_ae(unknown_callers_refused):
    result = echo("127.0.0.1", port=unknown_callers_refused.port, ae_title="PACS", calling_ae=STRANGER)
    assert not result.ok
    assert result.message == "association rejected: calling AE title STRANGER (ours) not recognised by the peer"


def test_it_echoes_as_a_known_peer_when_unknown_callers_are_refused(unknown_callers_refused):
    assert echo("127.0.0.1", port=unknown_callers_refused.port, ae_title="PACS", calling_ae=MODALITY).ok


def test_it_reports_a_called_ae_title_runscp_does_not_answer_to(shared_scp):
    result = echo("127.0.0.1", port=shared_scp.port, ae_title="NOTPACS")
    assert not result.ok
    assert result.message == "association rejected: called AE title NOTPACS not recognised by the peer"


def test_it_calls_with_our_ae_title_from_the_settings(unknown_callers_refused):
    row = DicomServerSettings.load()
    row.ae_title = MODALITY  # runscp keeps answering to PACS: it was started with that title
    row.save()
    assert echo("127.0.0.1", port=unknown_callers_refused.port, ae_title="PACS").ok


def test_it_times_out_when_the_connection_is_never_accepted(db, full_listener):
    started = time.monotonic()
    result = echo("127.0.0.1", port=full_listener, ae_title="PACS", timeout=1)
    assert time.monotonic() - started < 3
    assert not result.ok
    assert result.message.startswith("peer did not answer within 1 s")


def test_it_times_out_when_the_peer_never_answers_the_association_request(db, silent_listener):
    started = time.monotonic()
    result = echo("127.0.0.1", port=silent_listener, ae_title="PACS", timeout=1)
    assert time.monotonic() - started < 3
    assert not result.ok
    assert result.message.startswith("peer did not answer within 1 s")


def test_the_service_timeout_is_the_default(db, silent_listener):
    row = DicomServerSettings.load()
    row.service_timeout = 1
    row.save()
    started = time.monotonic()
    assert "within 1 s" in echo("127.0.0.1", port=silent_listener, ae_title="PACS").message
    assert time.monotonic() - started < 3


def test_a_bad_called_ae_title_is_reported_not_raised(db):
    result = echo("127.0.0.1", port=104, ae_title="HAS SPACE")
    assert not result.ok
    assert result.message.startswith("called AE title 'HAS SPACE':")


def test_several_peers_are_echoed_at_once(db, full_listener):
    peers = [Peer(name=f"dead {i}", ae_title="PACS", host="127.0.0.1", port=full_listener) for i in range(3)]
    started = time.monotonic()
    results = echo_many(peers, timeout=1)
    assert time.monotonic() - started < 3, "three time-outs of 1 s ran in parallel"
    assert [peer for peer, _ in results] == peers
    assert all(not result.ok for _, result in results)
