"""What every listener does the same way: follow its settings, open its
socket, name its peers.

`SettingsFollower` is the pure part (no socket): it is told the wanted
(port, …) on every poll and calls the `start`/`stop` pair it was given.
`listening_socket()` is the socket every listener binds: one dual-stack
IPv6 socket where the machine has IPv6, else IPv4.  `peer_address()` is how
a peer's address is shown and compared everywhere.
"""

import errno
import functools
import ipaddress
import socket

from pacs_site.ports import bind_failure

# errno values meaning "this machine has no IPv6", not "the port is taken".
_NO_IPV6 = {errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT}


class StartRefused(Exception):
    """Raised by a `start` callback that must not start with these settings
    (unusable TLS files): the message says why and is reported as it is."""


class SettingsFollower:
    """Keeps one listener in line with its settings.

    `follow(port, *extra)` on every poll:

    1. the same wanted (port, *extra) as the listener runs or idles with:
       nothing to do;
    2. else, with the listener running, `update(old, new)` (if given) may
       apply the change in place and return True: no new socket;
    3. else `stop()`; port 0 logs "<idle>; idle" once and stays idle;
    4. else `start(port, *extra)`.  An OSError there (the bind) is logged as
       `bind_failure()` + "; retrying", a `StartRefused` with its own text;
       either is logged once for the same settings and the same message, and
       tried again on the next poll.  A new message, new settings, going
       idle or a success forget it.

    `follow()` returns True when the listener changed (started, stopped to
    idle, updated in place).  `log` is a logger (or anything with `info` and
    `error` taking a format and its arguments).
    """

    def __init__(self, *, start, stop, idle, log, update=None):
        self._start = start
        self._stop = stop
        self._update = update
        self.idle = idle
        self.log = log
        self.running = False
        self.bound = None  # the wanted (port, *extra) the listener runs or idles with
        self._failure = None  # (wanted, message) last reported

    def follow(self, port, *extra) -> bool:
        wanted = (port, *extra)
        if wanted == self.bound:
            return False
        if self.running and self._update is not None and self._update(self.bound, wanted):
            self.bound = wanted
            self._failure = None
            return True
        self.stop()
        if port == 0:
            self.log.info("%s; idle", self.idle)
            self.bound = wanted
            self._failure = None
            return True
        return self.start(port, *extra)

    def start(self, port, *extra) -> bool:
        """Start now, whatever ran before (a runscp worker starts once on its
        channel and follows nothing); a failure is reported once."""
        wanted = (port, *extra)
        try:
            self._start(port, *extra)
        except StartRefused as exc:
            self._report_once(wanted, str(exc), "%s")
            return False
        except OSError as exc:
            self._report_once(wanted, bind_failure(port, exc), "%s; retrying")
            return False
        self.running = True
        self.bound = wanted
        self._failure = None
        return True

    def stop(self):
        """Stop the listener; the next `follow()` starts it again."""
        if self.running:
            self._stop()
            self.running = False
        self.bound = None

    def _report_once(self, wanted, message, form):
        if (wanted, message) != self._failure:
            self.log.error(form, message)
            self._failure = (wanted, message)


def listening_socket(port: int, *, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on every address: one dual-stack IPv6 socket
    ('::', IPv4 peers show up as ::ffff:a.b.c.d) where the machine has IPv6,
    else 0.0.0.0.  Raises OSError when the port cannot be bound."""
    if socket.has_dualstack_ipv6():
        try:
            return socket.create_server(("::", port), family=socket.AF_INET6, backlog=backlog, dualstack_ipv6=True)
        except OSError as exc:
            if exc.errno not in _NO_IPV6:
                raise
    return socket.create_server(("0.0.0.0", port), backlog=backlog)


def peer_address(address) -> str:
    """How a peer is shown and compared.

    A host gives the host: an IPv4 peer on a dual-stack socket
    (::ffff:a.b.c.d) becomes a.b.c.d, an IPv6 address loses its scope and
    takes its short form, a name stays as it is.  A socket address
    (host, port[, flowinfo, scope_id]) gives 'host:port', '[v6]:port' for
    IPv6; no address gives 'unknown'.
    """
    if isinstance(address, str):
        return _host(address)
    if not address:
        return "unknown"
    host, port = _host(str(address[0])), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=1024)  # per C-STORE the access rules ask 2-3 times; ipaddress parsing is 8 µs
def _host(host: str) -> str:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ip)


def address_group(address: str) -> str:
    """What per-address limits count: an IPv4 address, or the /64 an IPv6
    address belongs to (one machine usually holds a whole /64, so counting
    single IPv6 addresses would not limit it).  A v4-mapped address counts
    as its IPv4 address; anything else as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
