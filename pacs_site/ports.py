"""Who holds a TCP port, and which addresses this machine has.

Shared by `checkports` and `pacs_site.listeners` (whose bind errors say who
holds the port: `bind_failure`).  Built on psutil.
"""

import errno
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil
from django.conf import settings


@dataclass
class Holder:
    pid: int | None
    name: str
    cmdline: str
    is_ours: bool


def listeners_on(port: int):
    """Processes with a listening TCP socket on `port` (any address)."""
    holders = {}
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, PermissionError):
        conns = []
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            holders.setdefault(c.pid, None)
    result = []
    for pid in holders:
        result.append(_holder(pid))
    return result


def _holder(pid):
    if pid is None:
        return Holder(None, "unknown (no permission to see the process)", "", False)
    try:
        proc = psutil.Process(pid)
        cmd = proc.cmdline()
        name = proc.name()
        cwd = proc.cwd()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return Holder(pid, "unknown", "", False)
    return Holder(pid, name, " ".join(cmd), _is_this_server(cmd, cwd))


def _is_this_server(cmdline, cwd):
    """A process of this installation: our manage.py (or daphne with our
    ASGI app) started from our folder."""
    base = Path(settings.BASE_DIR).resolve()
    joined = " ".join(cmdline)
    if "pacs_site.asgi" in joined and Path(cwd).resolve() == base:
        return True
    for arg in cmdline:
        if arg.endswith("manage.py"):
            path = Path(arg) if Path(arg).is_absolute() else Path(cwd) / arg
            if path.resolve().parent == base:
                return True
    return False


def describe_holder(port: int) -> str:
    holders = listeners_on(port)
    if not holders:
        return "no listening process found; the address may be reserved or permission denied"
    return "; ".join(
        f"held by {'this server' if h.is_ours else 'another program'}: PID {h.pid} {h.name}" for h in holders
    )


def bind_failure(port: int, exc: OSError) -> str:
    """What a listener logs when it cannot bind: why, and who holds the port."""
    message = f"cannot listen on port {port}: {exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        message += f" ({describe_holder(port)})"
    return message


def port_is_free(port: int) -> bool:
    """True if we could bind the port now (on every address)."""
    for family, addr in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((addr, port))
                return True
        except OSError:
            continue
    return False


def machine_addresses():
    """[(interface, family name, address)] for every IPv4 and IPv6 address."""
    rows = []
    for iface, addrs in sorted(psutil.net_if_addrs().items()):
        for a in addrs:
            if a.family == socket.AF_INET:
                rows.append((iface, "IPv4", a.address))
            elif a.family == socket.AF_INET6:
                rows.append((iface, "IPv6", a.address))
    return rows
