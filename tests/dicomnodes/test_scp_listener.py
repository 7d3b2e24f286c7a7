"""runscp's listener (`scp/server.Listener`) in this process: each
connection accepted on its port, or handed over on a worker's channel,
runs as an AcceptorSession in a thread of its own; a waiting connection
gives way beyond the cap; shutdown() stops accepting.  No database: the
peer here sends a PDU that is not an A-ASSOCIATE-RQ, which the session
answers with an A-ABORT before it needs one."""

import socket
import threading

import pytest

from dicomnodes.net.pdata import A_ABORT
from dicomnodes.scp.limits import ConnectionTable
from dicomnodes.scp.server import Listener, ScpConfig
from tests.support.processes import wait_until

# A P-DATA-TF PDU with one empty-ish PDV: not what a connection starts with.
NOT_AN_RQ = bytes((0x04, 0, 0, 0, 0, 6, 0, 0, 0, 2, 1, 0x03))


def config(**overrides):
    values = dict(ae_title="PACS", port=0, debug=False, service_timeout=5, overwrite=False, fsync=False, access=None)
    values.update(overrides)
    return ScpConfig(**values)


@pytest.fixture
def serve():
    """Start a Listener in a thread; stopped (and checked stopped) after the test."""
    started = []

    def start(**kwargs):
        cfg = config(max_associations=kwargs.pop("max_associations", 100))
        listener = Listener(0, config=lambda: cfg, writer=None, connections=ConnectionTable(), **kwargs)
        thread = threading.Thread(target=listener.serve_forever, daemon=True)
        thread.start()
        started.append((listener, thread))
        return listener

    yield start
    for listener, thread in started:
        listener.shutdown()
        thread.join(5)
        assert not thread.is_alive()


def answer_to_not_an_rq(sock):
    """The PDU type runscp answers NOT_AN_RQ with (A-ABORT expected)."""
    sock.settimeout(5)
    sock.sendall(NOT_AN_RQ)
    return sock.recv(10)[:1]


def test_a_connection_runs_as_a_session_and_shutdown_stops_accepting(serve):
    listener = serve()
    port = listener.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as peer:
        assert answer_to_not_an_rq(peer) == bytes((A_ABORT,))
    wait_until(lambda: listener.connections.counts() == (0, 0), 5, message="the connection to be forgotten")
    listener.shutdown()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_a_waiting_connection_gives_way_to_a_newer_one_beyond_the_cap(serve):
    listener = serve(max_associations=1)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as first:
        wait_until(lambda: listener.connections.counts() == (1, 0), 5, message="the first connection accepted")
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as second:
            assert first.recv(1) == b""  # shut to make room
            assert answer_to_not_an_rq(second) == bytes((A_ABORT,))


def test_a_worker_takes_connections_from_its_channel_and_ignores_a_message_without_one(serve):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, socket.create_server(("127.0.0.1", 0)) as front:
        listener = serve(channel=theirs)
        ours.send(b"c")  # no file descriptor: logged, nothing else
        with socket.create_connection(front.getsockname(), timeout=5) as peer:
            accepted, _ = front.accept()
            with accepted:
                socket.send_fds(ours, [b"c"], [accepted.fileno()])
            assert answer_to_not_an_rq(peer) == bytes((A_ABORT,))
    wait_until(lambda: listener.connections.counts() == (0, 0), 5, message="the connection to be forgotten")
