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

With `runscp --processes N` the associations of every worker count
together (`SharedCounts`, handed to each worker's table); waiting
connections are counted per worker.
"""

import fcntl
import hashlib
import mmap
import struct
import tempfile
import threading
import time
from contextlib import contextmanager
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


class SharedCounts:
    """Associations per address group of every runscp worker, in memory the
    dispatcher maps before it forks them: one row per worker, each a table
    of (address group hash, associations) slots under a total.

    A worker writes only its own row and reads them all; check-and-add runs
    under a POSIX record lock (`lockf`: the process's own, so it excludes
    the other workers and is let go when a worker dies) and a thread lock
    (which the record lock does not give between threads).  The dispatcher
    clears the row of a worker that ended (`clear`), so a killed worker's
    associations do not count for ever.  A worker whose row is full (more
    than SLOTS addresses at once) refuses the next new address."""

    SLOTS = 1024
    _HEAD = struct.Struct("<I4x")  # the row's total
    _SLOT = struct.Struct("<QI4x")  # address group hash (0: never used), associations

    def __init__(self, rows: int):
        self.rows = rows
        self._row_size = self._HEAD.size + self.SLOTS * self._SLOT.size
        self._map = mmap.mmap(-1, rows * self._row_size)  # anonymous: MAP_SHARED, inherited by fork
        self._lockfile = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the table
        self._thread_lock = threading.Lock()

    @contextmanager
    def _locked(self):
        with self._thread_lock:
            fcntl.lockf(self._lockfile.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._lockfile.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _key(group: str) -> int:
        return int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "little") or 1

    def _slot_offset(self, row, index):
        return row * self._row_size + self._HEAD.size + index * self._SLOT.size

    def _find(self, row, key):
        """(index of `key`'s slot or None, index of a reusable slot or None)."""
        start, reusable = key % self.SLOTS, None
        for step in range(self.SLOTS):
            index = (start + step) % self.SLOTS
            slot_key, count = self._SLOT.unpack_from(self._map, self._slot_offset(row, index))
            if slot_key == key:
                return index, reusable
            if reusable is None and count == 0:
                reusable = index
            if slot_key == 0:
                break
        return None, reusable

    def _total(self, row):
        return self._HEAD.unpack_from(self._map, row * self._row_size)[0]

    def _count(self, row, key):
        index, _ = self._find(row, key)
        return 0 if index is None else self._SLOT.unpack_from(self._map, self._slot_offset(row, index))[1]

    def _add(self, row, key, delta):
        index, reusable = self._find(row, key)
        if index is None:
            if delta < 0 or reusable is None:
                return False
            index = reusable
        offset = self._slot_offset(row, index)
        count = (
            self._SLOT.unpack_from(self._map, offset)[1] if self._SLOT.unpack_from(self._map, offset)[0] == key else 0
        )
        self._SLOT.pack_into(self._map, offset, key, max(0, count + delta))
        self._HEAD.pack_into(self._map, row * self._row_size, max(0, self._total(row) + delta))
        return True

    def admit(self, row: int, group: str, *, max_total: int, max_per_address: int) -> str:
        """Count one more association of `group` in `row`; '' if admitted,
        else why not (the same words as a single process's table)."""
        key = self._key(group)
        with self._locked():
            total = sum(self._total(r) for r in range(self.rows))
            if total >= max_total:
                return f"{total} associations at once already (the maximum)"
            same = sum(self._count(r, key) for r in range(self.rows))
            if same >= max_per_address:
                return f"{same} associations from {group} already (the maximum per address)"
            if not self._add(row, key, 1):
                return f"associations from {self.SLOTS} addresses at once in one process already"
            return ""

    def release(self, row: int, group: str) -> None:
        with self._locked():
            self._add(row, self._key(group), -1)

    def counts(self) -> tuple[int, ...]:
        """Each row's associations."""
        with self._locked():
            return tuple(self._total(r) for r in range(self.rows))

    def clear(self, row: int) -> None:
        """Forget a worker's associations (it ended)."""
        with self._locked():
            start = row * self._row_size
            self._map[start : start + self._row_size] = bytes(self._row_size)


class ConnectionTable:
    """The live connections of one runscp process (thread-safe); with
    `shared` (a SharedCounts and this worker's row in it) the associations
    of every worker count against the maximums."""

    def __init__(self, shared: tuple[SharedCounts, int] | None = None):
        self._lock = threading.Lock()
        self._live: list[Connection] = []
        self._shared = shared

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
            if self._shared is not None:
                counts, row = self._shared
                busy = counts.admit(row, conn.group, max_total=max_total, max_per_address=max_per_address)
                conn.associated = not busy
                return busy
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
                if conn.associated and self._shared is not None:
                    counts, row = self._shared
                    counts.release(row, conn.group)

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
