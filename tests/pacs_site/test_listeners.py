"""pacs_site.listeners: the settings follower (no socket: a fake listener and
a recording log), the listening socket on both address families, and the one
peer-address formatter."""

import errno
import socket

import pytest

from pacs_site.listeners import SettingsFollower, StartRefused, listening_socket, peer_address

DENIED = OSError(errno.EACCES, "Permission denied")
NOT_HERE = OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")


class Log:
    def __init__(self):
        self.lines = []

    def info(self, form, *args):
        self.lines.append(("info", form % args))

    def error(self, form, *args):
        self.lines.append(("error", form % args))

    def errors(self):
        return [text for level, text in self.lines if level == "error"]


class FakeListener:
    """Records what the follower asks; starts fail with `failure` while it is set."""

    def __init__(self):
        self.calls = []
        self.failure = None

    def start(self, port, *extra):
        self.calls.append(("start", port, *extra))
        if self.failure is not None:
            raise self.failure

    def stop(self):
        self.calls.append(("stop",))


@pytest.fixture
def listener():
    return FakeListener()


@pytest.fixture
def log():
    return Log()


@pytest.fixture
def follower(listener, log):
    return SettingsFollower(start=listener.start, stop=listener.stop, idle="test server disabled (port 0)", log=log)


def test_the_first_settings_start_the_listener(follower, listener):
    assert follower.follow(104, "PACS") is True
    assert listener.calls == [("start", 104, "PACS")]
    assert follower.running


def test_the_same_settings_again_change_nothing(follower, listener, log):
    follower.follow(104, "PACS")
    assert follower.follow(104, "PACS") is False
    assert listener.calls == [("start", 104, "PACS")]
    assert log.lines == []


def test_a_new_port_stops_the_listener_and_starts_it_on_the_new_one(follower, listener):
    follower.follow(104, "PACS")
    assert follower.follow(11112, "PACS") is True
    assert listener.calls == [("start", 104, "PACS"), ("stop",), ("start", 11112, "PACS")]


def test_a_change_that_update_applies_in_place_keeps_the_socket(listener, log):
    seen = []

    def update(old, new):
        seen.append((old, new))
        return old[0] == new[0]  # a new AE title on the same port

    follower = SettingsFollower(start=listener.start, stop=listener.stop, update=update, idle="idle", log=log)
    follower.follow(104, "PACS")
    assert follower.follow(104, "RENAMED") is True
    assert listener.calls == [("start", 104, "PACS")]
    assert seen == [((104, "PACS"), (104, "RENAMED"))]
    follower.follow(105, "RENAMED")
    assert listener.calls[1:] == [("stop",), ("start", 105, "RENAMED")]


def test_port_0_stops_the_listener_and_says_idle_once(follower, listener, log):
    follower.follow(104, "PACS")
    assert follower.follow(0, "PACS") is True
    assert follower.follow(0, "PACS") is False
    assert listener.calls == [("start", 104, "PACS"), ("stop",)]
    assert log.lines == [("info", "test server disabled (port 0); idle")]
    assert not follower.running


def test_a_bind_error_is_logged_once_and_tried_again_on_every_poll(follower, listener, log):
    listener.failure = DENIED
    assert [follower.follow(104, "PACS") for _ in range(3)] == [False, False, False]
    assert listener.calls == [("start", 104, "PACS")] * 3
    assert log.errors() == ["cannot listen on port 104: Permission denied; retrying"]
    assert not follower.running


def test_a_different_bind_error_is_logged_at_once(follower, listener, log):
    listener.failure = DENIED
    follower.follow(104, "PACS")
    listener.failure = NOT_HERE
    follower.follow(104, "PACS")
    assert log.errors() == [
        "cannot listen on port 104: Permission denied; retrying",
        "cannot listen on port 104: Cannot assign requested address; retrying",
    ]


def test_the_same_bind_error_is_logged_again_after_a_change_of_settings(follower, listener, log):
    listener.failure = DENIED
    follower.follow(104, "PACS")
    follower.follow(0, "PACS")  # the admin switches it off, then on again
    follower.follow(104, "PACS")
    follower.follow(104, "PACS")
    follower.follow(104, "RENAMED")
    assert log.errors() == ["cannot listen on port 104: Permission denied; retrying"] * 3


def test_a_success_after_a_bind_error_forgets_it(follower, listener, log):
    listener.failure = DENIED
    follower.follow(104, "PACS")
    listener.failure = None
    assert follower.follow(104, "PACS") is True
    assert follower.running
    follower.stop()
    listener.failure = DENIED
    follower.follow(104, "PACS")
    assert log.errors() == ["cannot listen on port 104: Permission denied; retrying"] * 2


def test_a_refused_start_is_said_as_it_is_and_once(follower, listener, log):
    listener.failure = StartRefused("web server not started: the key file does not exist")
    follower.follow(8443, "tls")
    follower.follow(8443, "tls")
    assert log.errors() == ["web server not started: the key file does not exist"]
    assert len(listener.calls) == 2


def test_start_starts_whatever_the_port_and_follows_nothing(follower, listener, log):
    """A runscp worker serves the dispatcher's channel even while the port is 0."""
    assert follower.start(0, "PACS") is True
    assert listener.calls == [("start", 0, "PACS")]
    assert log.lines == []


def test_stop_forgets_the_settings_so_that_the_next_follow_starts_again(follower, listener):
    follower.follow(104, "PACS")
    follower.stop()
    follower.stop()
    follower.follow(104, "PACS")
    assert listener.calls == [("start", 104, "PACS"), ("stop",), ("start", 104, "PACS")]


def _accepted_peer(server, host):
    port = server.getsockname()[1]
    with socket.create_connection((host, port), timeout=5):
        server.settimeout(5)
        client, peer = server.accept()
        client.close()
    return peer_address(peer)


def test_the_listening_socket_takes_ipv4_connections():
    with listening_socket(0) as server:
        assert _accepted_peer(server, "127.0.0.1").startswith("127.0.0.1:")


def test_the_listening_socket_takes_ipv6_connections_where_the_machine_has_ipv6():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 on this machine (cannot bind ::1: {exc})")
    with listening_socket(0) as server:
        assert server.family == socket.AF_INET6
        assert _accepted_peer(server, "::1").startswith("[::1]:")


def test_a_port_in_use_is_an_error_not_a_fallback_to_ipv4():
    with listening_socket(0) as held:
        with pytest.raises(OSError) as raised:
            listening_socket(held.getsockname()[1])
    assert raised.value.errno == errno.EADDRINUSE


def test_without_ipv6_the_listening_socket_is_ipv4(monkeypatch):
    monkeypatch.setattr(socket, "has_dualstack_ipv6", lambda: False)
    with listening_socket(0) as server:
        assert server.family == socket.AF_INET
        assert _accepted_peer(server, "127.0.0.1").startswith("127.0.0.1:")


def test_peer_addresses_show_ipv4_plainly_and_ipv6_in_brackets():
    assert peer_address(("::ffff:10.1.2.3", 4000, 0, 0)) == "10.1.2.3:4000"
    assert peer_address(("127.0.0.1", 4000)) == "127.0.0.1:4000"
    assert peer_address(("::1", 4000, 0, 0)) == "[::1]:4000"
    assert peer_address(("fe80::1%eth0", 4000, 0, 2)) == "[fe80::1]:4000"
    assert peer_address(None) == "unknown"


def test_a_bare_host_is_shown_the_way_it_is_compared():
    assert peer_address("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_address("::FFFF:C000:0207") == "192.0.2.7"
    assert peer_address("2001:DB8::0001") == "2001:db8::1"
    assert peer_address("ct-scanner.example") == "ct-scanner.example"
    assert peer_address("") == ""
