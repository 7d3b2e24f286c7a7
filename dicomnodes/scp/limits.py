"""How many connections and associations runscp holds, and who gives way.

The pure part of the DICOM server's limits (no socket here; the server
calls it and acts on what it says):

1. Every accepted connection is *waiting* until its A-ASSOCIATE-RQ has
   arrived.  Waiting connections are capped: one beyond the cap makes the
   oldest waiting connection of the address holding the most of them give
   way (its socket is shut down).  A connection that sends a byte and then
   nothing therefore cannot crowd out a modality that is about to ask for
   an association, and a host that opens thousands of them mostly evicts
   its own.
2. An association asked for counts against `max_associations` in total and
   `max_associations_per_address` per address (`address_group`: IPv6 per
   /64).  Beyond either, `admit()` says no and the server answers
   A-ASSOCIATE-RJ rejected-transient, local limit exceeded (PS3.8 9.3.4),
   so the caller may try again later.
3. `stuck()` lists every connection, for a shutdown that must not wait on
   any of them.
"""

import threading
import time
from dataclasses import dataclass, field

from pacs_site.listeners import address_group


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection; `sock` is whatever the server shuts down."""

    address: str
    sock: object = None
    accepted: float = field(default_factory=time.monotonic)
    associated: bool = False
    group: str = ""

    def __post_init__(self):
        self.group = self.group or address_group(self.address)


class ConnectionTable:
    """The live connections of one runscp process (thread-safe)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._live: list[Connection] = []

    def accept(self, conn: Connection, *, max_waiting: int) -> list[Connection]:
        """Add a new connection; return the waiting ones that must give way
        (at most one, unless the cap was lowered)."""
        with self._lock:
            self._live.append(conn)
            evicted = []
            waiting = [c for c in self._live if not c.associated]
            while len(waiting) > max_waiting:
                victim = _oldest_of_busiest(waiting)
                waiting.remove(victim)
                self._live.remove(victim)
                evicted.append(victim)
            return evicted

    def admit(self, conn: Connection, *, max_total: int, max_per_address: int) -> str:
        """Count `conn` as an association; '' if admitted, else why not."""
        with self._lock:
            if conn not in self._live:
                return "the connection gave way to newer ones while it waited"
            others = [c for c in self._live if c.associated and c is not conn]
            if len(others) >= max_total:
                return f"{len(others)} associations at once already (the maximum)"
            group = conn.group
            same = sum(1 for c in others if c.group == group)
            if same >= max_per_address:
                return f"{same} associations from {group} already (the maximum per address)"
            conn.associated = True
            return ""

    def close(self, conn: Connection) -> None:
        with self._lock:
            if conn in self._live:
                self._live.remove(conn)

    def counts(self) -> tuple[int, int]:
        """(waiting connections, associations)."""
        with self._lock:
            associated = sum(1 for c in self._live if c.associated)
            return len(self._live) - associated, associated

    def stuck(self) -> list[Connection]:
        with self._lock:
            return list(self._live)


def _oldest_of_busiest(waiting: list[Connection]) -> Connection:
    per_group: dict[str, list[Connection]] = {}
    for conn in waiting:
        per_group.setdefault(conn.group, []).append(conn)
    busiest = max(per_group.values(), key=len)
    return min(busiest, key=lambda c: c.accepted)
