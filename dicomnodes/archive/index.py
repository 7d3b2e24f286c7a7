"""The archive index: rows for stored files, written in group commits.

`apply_batch()` is the plain function that does the work (testable without a
network); `IndexWriter` is the one thread per `runscp` process that calls it
with every job that queued up while the previous transaction ran.  The
C-STORE handler waits for its job, so the sender's success response always
follows a committed row.
"""

import fcntl
import logging
import os
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from dicomnodes.archive import notifications, rawsql
from dicomnodes.archive.header import InstanceHeader
from dicomnodes.archive.hierarchy import (
    Created,
    HierarchyCache,
    add_to_counters,
    ensure_patients,
    ensure_series,
    ensure_studies,
    fills_patient,
    recount,
)
from dicomnodes.archive.rawsql import existing_instances, insert_instances, opened_connection, thread_connection
from dicomnodes.archive.tombstones import check_new_rows, has_tombstones
from dicomnodes.models import AssociationLog, Instance

logger = logging.getLogger(__name__)


class Outcome:
    STORED = "stored"
    DUPLICATE = "duplicate"  # kept the first copy
    REPLACED = "replaced"  # overwrote the first copy


@dataclass(slots=True)
class IndexItem:
    """One received instance whose file is already on disk."""

    header: InstanceHeader
    file_size: int
    file_is_new: bool  # False: a file was already there and was kept
    overwrite: bool
    called_ae: str = ""
    calling_ae: str = ""
    association_id: object = None
    received_at: datetime = field(default_factory=timezone.now)
    # From a peer in the peer list (or a retrieve we asked for): a study it
    # creates may complete orders and join patient links.
    from_known_peer: bool = True


@dataclass(slots=True)
class AssociationOpen:
    row: AssociationLog


@dataclass(slots=True)
class AssociationClose:
    association_id: object
    values: dict
    sop_instance_uids: list = field(default_factory=list)  # stored in it, duplicates included


def apply_batch(jobs, cache=None, created=None):
    """Apply a list of IndexItem / AssociationOpen / AssociationClose in one
    transaction; returns one result per job (an Outcome for IndexItem, None
    otherwise).  `created`, a hierarchy.Created, learns what the batch created.

    1. association rows opened in this batch are inserted first (instances
       point at them);
    2. instances are indexed (patients, studies, series created as needed);
    3. closing association rows are updated last.

    With a cache, a batch of new instances the cache knows all of goes
    through `_apply_known` (raw SQL in a raw transaction).
    """
    if cache is not None:
        outcomes = _apply_known(jobs, cache)
        if outcomes is not None:
            return outcomes
    opens = [j.row for j in jobs if isinstance(j, AssociationOpen)]
    items = [j for j in jobs if isinstance(j, IndexItem)]
    closes = [j for j in jobs if isinstance(j, AssociationClose)]
    with transaction.atomic():
        if opens:
            AssociationLog.objects.bulk_create(opens, ignore_conflicts=True)
        outcomes = iter(index_instances(items, cache, created)) if items else iter(())
        for close in closes:
            AssociationLog.objects.filter(pk=close.association_id).update(**close.values)
    return [next(outcomes) if isinstance(j, IndexItem) else None for j in jobs]


def index_instances(items, cache=None, created=None):
    """Create or update the rows of `items`; returns their Outcomes in order.

    1. sort the items into new, duplicate (kept first) and replacing ones;
    2. find or create the patients, studies and series they need;
    3. insert and update the instance rows;
    4. bring the counters up to date: increments for new rows, a recount
       (which also drops rows left empty) where a replacement moved an
       instance to another series.
    """
    cache = cache if cache is not None else HierarchyCache()
    existing = existing_instances({i.header.sop_instance_uid for i in items})
    outcomes, final = [], {}  # final: uid -> the item whose copy ends up on disk
    for item in items:
        uid = item.header.sop_instance_uid
        if uid in existing or uid in final:
            replaces = item.overwrite and item.file_is_new
            outcomes.append(Outcome.REPLACED if replaces else Outcome.DUPLICATE)
            if replaces:
                final[uid] = item
        else:
            outcomes.append(Outcome.STORED)
            final[uid] = item
    wanted = list(final.values())
    if not wanted:
        return outcomes
    # An instance of a deleted study sent again: its tombstone goes (or the
    # item fails while the deleted copy is still on disk).
    check_new_rows([item for item in wanted if item.header.sop_instance_uid not in existing])

    created = created if created is not None else Created()
    headers = [item.header for item in wanted]
    patients = ensure_patients(headers, cache)
    known_studies = {item.header.study_instance_uid for item in wanted if item.from_known_peer}
    studies = ensure_studies(headers, patients, cache, created, known_studies=known_studies)
    series = ensure_series(headers, studies, cache, created)

    to_create, new_per_series, moved = [], Counter(), set()
    for item in wanted:
        uid = item.header.sop_instance_uid
        row = _instance_row(item, series[item.header.series_instance_uid])
        if uid in existing:  # an overwrite of an indexed instance
            fields = {k: v for k, v in row.items() if k not in ("sop_instance_uid", "series", "association")}
            Instance.objects.filter(sop_instance_uid=uid).update(
                series_id=row["series"], association_id=row["association"], **fields
            )
            if existing[uid] != row["series"]:
                moved.update({existing[uid], row["series"]})
        else:
            to_create.append(row)
            new_per_series[row["series"]] += 1
    # No "ignore conflicts": if another process inserted one of these UIDs
    # since our SELECT (PostgreSQL; SQLite serialises writers), the
    # IntegrityError makes the writer retry and see it as a duplicate.
    insert_instances(to_create)
    series_study = {cache.series[uid][0]: cache.series[uid][1] for uid in series}
    add_to_counters(new_per_series, created, series_study)
    if moved:
        recount(series_ids=moved)
        cache.clear()
    cache.trim()
    return outcomes


def _instance_row(item, series_pk):
    """The instance row of `item`, keyed like rawsql's insert_instances."""
    h = item.header
    return dict(
        sop_instance_uid=h.sop_instance_uid,
        series=series_pk,
        sop_class_uid=h.sop_class_uid,
        instance_number=h.instance_number,
        transfer_syntax_uid=h.transfer_syntax_uid,
        file_size=item.file_size,
        called_ae=item.called_ae,
        calling_ae=item.calling_ae,
        association=item.association_id,
        received_at=item.received_at,
    )


def _apply_known(jobs, cache):
    """`apply_batch` for the common case, or None (nothing written): new
    instances only, of series, studies and patients the cache knows, none
    of them filling a patient's missing demographics or having a tombstone.
    Every statement of that case is raw SQL, so its transaction is too
    (`rawsql.transaction`: 1.5 µs for BEGIN and COMMIT where Django's
    atomic() takes 21.6 µs, measured; one commit per instance for a lone
    sender).  Any other batch goes the general way."""
    if thread_connection().in_atomic_block:
        return None  # within a caller's atomic(): its transaction, Django's way
    series = []
    for job in jobs:
        if type(job) is not IndexItem:
            return None
        h = job.header
        patient = cache.patients.get((h.patient_id, h.issuer_of_patient_id))
        known = cache.series.get(h.series_instance_uid)
        if patient is None or known is None or h.study_instance_uid not in cache.studies:
            return None
        if fills_patient(patient, h):
            return None
        series.append(known)
    uids = [job.header.sop_instance_uid for job in jobs]
    if len(set(uids)) != len(uids):
        return None
    with rawsql.transaction() as done:
        if existing_instances(uids) or has_tombstones(uids):
            done.roll_back()
            return None
        insert_instances([_instance_row(job, pk) for job, (pk, _) in zip(jobs, series)])
        add_to_counters(Counter(pk for pk, _ in series), Created(), dict(series))
    cache.trim()
    return [Outcome.STORED] * len(jobs)


class SenderMarked:
    """The index writer as one C-STORE sees it: every IndexItem submitted
    through it says whether its sender is a known peer (the C-STORE core
    knows; `store_received`, which builds the item, need not)."""

    __slots__ = ("writer", "from_known_peer")

    def __init__(self, writer, *, from_known_peer):
        self.writer = writer
        self.from_known_peer = from_known_peer

    def submit(self, job):
        if isinstance(job, IndexItem):
            job.from_known_peer = self.from_known_peer
        return self.writer.submit(job)


# This process's id, kept up to date across fork(): os.getpid() is a system
# call, and the writer lock asked for it twice a commit.
_pid = os.getpid()


def _forked():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


class WriterLock:
    """One group commit at a time across every process writing the same
    SQLite file (runscp's workers, the web process's STOW, transfer jobs): a
    `flock` on a file beside the database, held around each transaction.

    SQLite alone makes a writer that finds the file locked sleep 1, 2, 5,
    10 ... ms and try again, however soon the lock is free: with two runscp
    workers, strace counted 1,121 such sleeps (3.4 s) in a run of 2000 small
    instances over 4 associations, fsync off, and 1,916 (4.6 s) with fsync
    on.  A process waiting in flock() is woken when the lock is let go.
    SQLite's own locking still keeps the database right; this lock only
    makes the wait short.  On PostgreSQL it does nothing."""

    def __init__(self):
        self._fd = None
        self._pid = None

    def __enter__(self):
        fd = self._file()
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fd is not None and self._pid == _pid:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _file(self):
        pid = _pid
        if self._pid == pid:
            return self._fd
        # First use in this process (a forked child gets a lock of its own).
        self._fd, self._pid = None, pid
        if connection.vendor == "sqlite":
            name = str(connection.settings_dict["NAME"])
            if name and not name.startswith((":memory:", "file:")):
                self._fd = os.open(f"{name}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self._fd


class IndexUnavailable(RuntimeError):
    """The index could not be written (database down, locked too long)."""


class _Pending:
    __slots__ = ("job", "done", "result", "error")

    def __init__(self, job):
        self.job = job
        self.done = threading.Event()
        self.result = None
        self.error = None

    def wait(self, timeout):
        if not self.done.wait(timeout):
            raise IndexUnavailable(f"index not written within {timeout:.0f} s")
        if self.error is not None:
            raise IndexUnavailable(str(self.error))
        return self.result


_STOP = object()


# The longest the index writer's commits stay unsynced (IndexWriter).
SYNC_AFTER = 1.0


class IndexWriter:
    """One thread that commits what every association thread hands it.

    While one transaction runs, new jobs queue up; the next transaction takes
    them all (group commit without an artificial delay, so a lone sender
    waits for nothing but its own commit).

    Its own commits do not wait for the disk (SQLite synchronous=NORMAL on
    its connection, PostgreSQL synchronous_commit=off): the thread syncs the
    SQLite WAL itself at most `sync_after` seconds after a commit (PostgreSQL's
    WAL writer does within 3 × wal_writer_delay).  A power cut can thus roll
    back the last second of rows, never a file: "fsync on store" syncs each
    file before its sender is answered (while its row commits here), and the
    scan at every start of runscp (`reconcile.index_orphans`) indexes the
    files newer than the newest row again, and drops the rows of files a
    power cut left incomplete (docs/storage.md, Durability).  A lone sender with fsync on waited for three syncs
    per instance (file, folder, WAL), now two (docs/storage.md has the
    figures).  Every other connection keeps PACS_SQLITE_SYNCHRONOUS (FULL).

    `on_studies_created(studies)` is called after a commit that created
    studies, with a `signals.NewStudy` for each, and
    `on_associations_closed(closes)` with the AssociationClose jobs of a
    commit that closed associations; by default they send the signals of
    `dicomnodes.signals` (see `notifications`).  Their failures are logged
    and never fail the ingest.
    """

    def __init__(
        self,
        *,
        max_batch=512,
        sync_after=SYNC_AFTER,
        on_studies_created=notifications.studies_created,
        on_associations_closed=notifications.associations_closed,
    ):
        self.max_batch = max_batch
        self.sync_after = sync_after
        self._relaxed = None  # the DB-API connection told not to wait for the disk
        self._sync_due = None  # monotonic deadline of the oldest unsynced commit
        self.syncs = 0
        self.on_studies_created = on_studies_created
        self.on_associations_closed = on_associations_closed
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self.batches = 0
        self.jobs = 0
        # Seconds spent waiting for the writer lock (other processes'
        # commits) and committing under it (gathering a batch, its
        # transaction): see summary().
        self.waited = 0.0
        self.held = 0.0
        self.cache = HierarchyCache()
        self.lock = WriterLock()

    def start(self):
        self._thread.start()
        return self

    def submit(self, job) -> _Pending:
        pending = _Pending(job)
        self._queue.put(pending)
        return pending

    def stop(self, timeout=30):
        """Finish everything queued so far, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self):
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=self._sync_wait())
            except queue.Empty:
                self._sync()
                continue
            if first is _STOP:
                break
            batch = [first]
            # The batch is gathered once the lock is ours: what arrived while
            # another process committed joins this transaction (and its fsync)
            # instead of waiting for one more.
            asked = time.perf_counter()
            with self.lock:
                got = time.perf_counter()
                while len(batch) < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stopping = True
                        break
                    batch.append(nxt)
                new_studies, closed = self._commit(batch)
            self.waited += got - asked
            self.held += time.perf_counter() - got
            # The hooks run after the lock is let go: another process's
            # commit need not wait for worklist matching or notifications.
            if self._sync_wait() == 0:
                self._sync()
            self._studies_created(new_studies)
            self._associations_closed(closed)
            for close in closed:
                # After every hook of this batch and the batches before it
                # (the tests wait for this line before they empty the database).
                logger.info("association %s: recorded, its studies announced", close.association_id)
        if self._sync_due is not None:
            self._sync()
        connection.close()

    def summary(self) -> str:
        """'2000 index jobs in 1337 commits (1.5 a commit; per commit 0.41 ms
        committing and 0.73 ms waiting for the writer lock)'.  The wait is
        for other processes' commits (runscp's workers, the web, transfer
        jobs; SQLite only, PostgreSQL has no such lock): when it outgrows the
        commit, their commits queue behind one another."""
        text = f"{self.jobs} index jobs in {self.batches} commits"
        if not self.batches:
            return text
        n = self.batches
        return (
            f"{text} ({self.jobs / n:.1f} a commit; per commit {self.held / n * 1e3:.2f} ms committing"
            f" and {self.waited / n * 1e3:.2f} ms waiting for the writer lock)"
        )

    def _sync_wait(self):
        """Seconds until the unsynced commits must be synced (None: none)."""
        if self._sync_due is None:
            return None
        return max(0.0, self._sync_due - time.monotonic())

    def _relax(self):
        """This thread's connection commits without waiting for the disk
        (set again whenever the connection is new)."""
        wrapper = opened_connection()
        if wrapper.connection is self._relaxed:
            return
        with wrapper.cursor() as cursor:
            if wrapper.vendor == "sqlite":
                cursor.execute("PRAGMA synchronous=NORMAL")
            elif wrapper.vendor == "postgresql":
                cursor.execute("SET synchronous_commit TO OFF")
        self._relaxed = wrapper.connection

    def _sync(self):
        """Make every commit so far durable: fsync the SQLite WAL, as
        synchronous=FULL does at each commit (PostgreSQL: its WAL writer)."""
        self._sync_due = None
        if connection.vendor == "sqlite":
            name = str(connection.settings_dict["NAME"])
            if name and not name.startswith((":memory:", "file:")):
                try:
                    fd = os.open(f"{name}-wal", os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    return  # no WAL: every commit is in the database file
                try:
                    os.fsync(fd)
                except OSError as exc:
                    logger.error("cannot sync the index's WAL: %s", exc)
                finally:
                    os.close(fd)
        self.syncs += 1

    def _commit(self, batch):
        """Apply `batch` in one transaction (the caller holds the lock) and
        release its senders; returns (new studies, AssociationClose jobs)
        for the hooks."""
        # No close_old_connections() here: with CONN_MAX_AGE=0 it would
        # reconnect for every commit.  A broken connection raises, and the
        # retry below starts with a new one.
        created = Created()
        if self._sync_due is None:
            self._sync_due = time.monotonic() + self.sync_after
        try:
            self._relax()
            results = apply_batch([p.job for p in batch], self.cache, created)
        except Exception as exc:
            # A concurrent writer, a row deleted under our cache, a lost
            # connection: start afresh and isolate the job that fails.
            logger.warning("group commit of %d jobs failed (%s); retrying one by one", len(batch), exc)
            self.cache.clear()
            connection.close()
            new_studies, closed = [], []
            for pending in batch:
                created = Created()  # a failed job's studies were rolled back
                try:
                    self._relax()
                    pending.result = apply_batch([pending.job], self.cache, created)[0]
                    new_studies += created.new_studies
                    closed += _closes([pending])
                except Exception as exc1:
                    logger.exception("index write failed")
                    self.cache.clear()
                    pending.error = exc1
                pending.done.set()
            return new_studies, closed
        self.batches += 1
        self.jobs += len(batch)
        for pending, result in zip(batch, results):
            pending.result = result
            pending.done.set()
        return created.new_studies, _closes(batch)

    def _studies_created(self, studies):
        """After the commit and after the senders were released, so that the
        hook (worklist matching) adds nothing to their wait."""
        if not studies or self.on_studies_created is None:
            return
        try:
            self.on_studies_created(studies)
        except Exception:
            logger.exception("the new-studies hook failed for %d studies; the images are stored", len(studies))

    def _associations_closed(self, closes):
        if not closes or self.on_associations_closed is None:
            return
        try:
            self.on_associations_closed(closes)
        except Exception:
            logger.exception("the closed-associations hook failed; the images are stored")


def _closes(batch):
    return [p.job for p in batch if isinstance(p.job, AssociationClose)]
