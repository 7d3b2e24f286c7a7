"""The archive index (dicomnodes/index.py) without a network: apply_batch()
on headers read from generated files, and the IndexWriter thread."""

import dataclasses
import os
import select
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from pydicom.uid import generate_uid

from dicomnodes.archive import index, tombstones
from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.hierarchy import Created, HierarchyCache
from dicomnodes.archive.index import (
    AssociationClose,
    AssociationOpen,
    IndexItem,
    IndexUnavailable,
    IndexWriter,
    Outcome,
    WriterLock,
    apply_batch,
)
from dicomnodes.models import AssociationLog, AssociationResult, Instance, Patient, Series, Study, Tombstone
from dicomnodes.signals import NewStudy
from tests.support.dicomdata import make_ct
from tests.support.processes import wait_until

pytestmark = pytest.mark.archive


@pytest.fixture
def header(tmp_path):
    """header(**make_ct arguments, modality=...) -> InstanceHeader of a new file."""

    def make(*, modality=None, **kwargs):
        path = make_ct(tmp_path / f"{uuid.uuid4().hex}.dcm", size=8, **kwargs)
        h = read_header_file(path)
        return dataclasses.replace(h, modality=modality) if modality else h

    return make


def stored(h, *, overwrite=False, file_is_new=True, **kwargs):
    return IndexItem(header=h, file_size=1000, file_is_new=file_is_new, overwrite=overwrite, **kwargs)


def series_headers(header, count, **kwargs):
    series_uid = generate_uid()
    return [header(series_uid=series_uid, instance_number=i + 1, **kwargs) for i in range(count)]


def row_counts():
    return {
        "patients": Patient.objects.count(),
        "studies": Study.objects.count(),
        "series": Series.objects.count(),
        "instances": Instance.objects.count(),
    }


# --- one batch -------------------------------------------------------------------


def test_a_batch_creates_patients_studies_series_and_counts(db, header):
    study_uid = generate_uid()
    mr = series_headers(header, 4, study_uid=study_uid, patient_id="P1", series_number=1, modality="MR")
    ct = series_headers(header, 6, study_uid=study_uid, patient_id="P1", series_number=2)
    other = header(patient_id="P2", patient_name="Roe^Richard")

    outcomes = apply_batch([stored(h) for h in mr + ct + [other]])

    assert outcomes == [Outcome.STORED] * 11
    assert row_counts() == {"patients": 2, "studies": 2, "series": 3, "instances": 11}
    study = Study.objects.get(study_instance_uid=study_uid)
    assert (study.num_series, study.num_instances) == (2, 10)
    assert study.modalities_in_study == "CT\\MR"  # sorted, whatever arrived first
    assert (study.patient_id, study.patient_name, study.patient_name_upper) == ("P1", "Doe^Jane", "DOE^JANE")
    assert sorted(study.series.values_list("modality", "num_instances")) == [("CT", 6), ("MR", 4)]
    assert Patient.objects.get(patient_id="P1").num_studies == 1
    assert Patient.objects.get(patient_id="P2").studies.get().num_instances == 1


def test_an_instance_row_keeps_what_the_item_says(db, header):
    h = header(instance_number=5)
    apply_batch([stored(h, called_ae="PACS_TE", calling_ae="MODALITY1")])
    row = Instance.objects.get(sop_instance_uid=h.sop_instance_uid)
    assert (row.instance_number, row.called_ae, row.calling_ae, row.file_size) == (5, "PACS_TE", "MODALITY1", 1000)
    assert row.series.series_instance_uid == h.series_instance_uid
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def test_a_second_study_of_a_patient_is_counted(db, header):
    apply_batch([stored(header(patient_id="P1"))])
    apply_batch([stored(header(patient_id="P1"))])
    assert Patient.objects.get(patient_id="P1").num_studies == 2


# --- duplicates and overwrites --------------------------------------------------


def test_a_duplicate_in_the_same_batch_is_indexed_once(db, header):
    h = header()
    assert apply_batch([stored(h), stored(h)]) == [Outcome.STORED, Outcome.DUPLICATE]
    assert row_counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert Series.objects.get().num_instances == 1


def test_a_kept_first_duplicate_in_another_study_creates_no_empty_rows(db, header):
    sop_uid = generate_uid()
    first = header(sop_uid=sop_uid, patient_id="P1")
    apply_batch([stored(first)])
    again = header(sop_uid=sop_uid, patient_id="P2")

    assert apply_batch([stored(again, file_is_new=False)]) == [Outcome.DUPLICATE]

    assert not Study.objects.filter(study_instance_uid=again.study_instance_uid).exists()
    assert not Series.objects.filter(series_instance_uid=again.series_instance_uid).exists()
    assert not Patient.objects.filter(patient_id="P2").exists()
    assert Instance.objects.get().series.series_instance_uid == first.series_instance_uid


def test_an_overwrite_moving_the_only_instance_removes_the_emptied_rows(db, header):
    sop_uid = generate_uid()
    first = header(sop_uid=sop_uid, patient_id="P1")
    apply_batch([stored(first)])
    moved = header(sop_uid=sop_uid, patient_id="P2", patient_name="Roe^Richard")

    assert apply_batch([stored(moved, overwrite=True)]) == [Outcome.REPLACED]

    assert row_counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert Instance.objects.get().series.series_instance_uid == moved.series_instance_uid
    assert not Study.objects.filter(study_instance_uid=first.study_instance_uid).exists()
    assert Patient.objects.get().patient_id == "P2"
    assert Study.objects.get().num_instances == 1


def test_an_overwrite_moving_one_of_two_instances_recounts_the_old_series(db, header):
    study_uid = generate_uid()
    first, second = series_headers(header, 2, study_uid=study_uid)
    apply_batch([stored(first), stored(second)])
    moved = header(sop_uid=second.sop_instance_uid, study_uid=study_uid, series_number=2)

    apply_batch([stored(moved, overwrite=True)])

    study = Study.objects.get()
    assert (study.num_series, study.num_instances) == (2, 2)
    assert sorted(study.series.values_list("num_instances", flat=True)) == [1, 1]


def test_an_overwrite_in_the_same_series_updates_the_row(db, header):
    h = header()
    apply_batch([stored(h, calling_ae="FIRST")])
    assert apply_batch([stored(h, overwrite=True, calling_ae="SECOND")]) == [Outcome.REPLACED]
    assert Instance.objects.get().calling_ae == "SECOND"
    assert row_counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}


def test_an_overwrite_that_kept_the_old_file_is_a_duplicate(db, header):
    h = header()
    apply_batch([stored(h, calling_ae="FIRST")])
    assert apply_batch([stored(h, overwrite=True, file_is_new=False, calling_ae="SECOND")]) == [Outcome.DUPLICATE]
    assert Instance.objects.get().calling_ae == "FIRST"


def test_an_overwrite_within_one_batch_leaves_only_the_last_copy(db, header):
    sop_uid = generate_uid()
    first, last = header(sop_uid=sop_uid), header(sop_uid=sop_uid)
    assert apply_batch([stored(first), stored(last, overwrite=True)]) == [Outcome.STORED, Outcome.REPLACED]
    assert row_counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    assert Series.objects.get().series_instance_uid == last.series_instance_uid


def test_a_new_instance_never_renames_a_stored_patient_or_study(db, header):
    study_uid = generate_uid()
    apply_batch([stored(header(study_uid=study_uid, patient_id="P1", patient_name="Doe^Jane"))])

    apply_batch([stored(header(study_uid=study_uid, patient_id="P1", patient_name="Mallory^Eve"))])

    patient, study = Patient.objects.get(), Study.objects.get()
    assert (patient.patient_name, patient.patient_name_upper) == ("Doe^Jane", "DOE^JANE")
    assert (study.patient_name, study.patient_name_upper) == ("Doe^Jane", "DOE^JANE")


def test_each_study_keeps_the_demographics_it_was_stored_with(db, header):
    first, second = generate_uid(), generate_uid()
    apply_batch([stored(header(study_uid=first, patient_id="P1", patient_name="Doe^Jane"))])

    apply_batch([stored(header(study_uid=second, patient_id="P1", patient_name="Doe^Janet"))])

    names = dict(Study.objects.values_list("study_instance_uid", "patient_name"))
    assert names == {first: "Doe^Jane", second: "Doe^Janet"}
    assert Patient.objects.get().patient_name == "Doe^Jane"


def test_a_new_instance_fills_only_what_the_patient_row_lacks(db, header):
    study_uid = generate_uid()
    apply_batch([stored(header(study_uid=study_uid, patient_id="P1", patient_name=""))])
    fuller = dataclasses.replace(
        header(study_uid=study_uid, patient_id="P1", patient_name="Doe^Jane"),
        patient_birth_date="19700101",
        patient_sex="F",
    )

    apply_batch([stored(fuller)])
    apply_batch([stored(header(study_uid=study_uid, patient_id="P1", patient_name="Mallory^Eve"))])

    patient = Patient.objects.get()
    assert (patient.patient_name, patient.patient_birth_date, patient.patient_sex) == ("Doe^Jane", "19700101", "F")
    assert Study.objects.get().patient_name == ""  # the study keeps what it came with


def test_a_study_remembers_whether_a_known_peer_created_it(db, header):
    known, unknown = header(accession="ACC1"), header(accession="ACC2")
    created = Created()

    apply_batch([stored(known), stored(unknown, from_known_peer=False)], created=created)

    flags = dict(Study.objects.values_list("study_instance_uid", "from_known_peer"))
    assert flags == {known.study_instance_uid: True, unknown.study_instance_uid: False}
    assert created.new_studies == [
        NewStudy(known.study_instance_uid, "ACC1", True),
        NewStudy(unknown.study_instance_uid, "ACC2", False),
    ]


# --- association rows ---------------------------------------------------------------


def test_an_association_opens_indexes_and_closes_in_one_batch(db, header):
    row = AssociationLog(started_at=timezone.now(), calling_ae="MODALITY1", called_ae="PACS")
    h = header()
    close = AssociationClose(
        row.id, {"result": AssociationResult.RELEASED, "instances_received": 1, "bytes_received": 1000}
    )

    results = apply_batch([AssociationOpen(row), stored(h, association_id=row.id), close])

    assert results == [None, Outcome.STORED, None]
    saved = AssociationLog.objects.get(pk=row.id)
    assert (saved.result, saved.instances_received, saved.bytes_received) == (AssociationResult.RELEASED, 1, 1000)
    assert Instance.objects.get().association_id == row.id


# --- the writer thread ----------------------------------------------------------


# --- the known-hierarchy batch: raw SQL in a raw transaction ---------------------


def index_snapshot():
    return (
        sorted(
            Instance.objects.values_list(
                "sop_instance_uid", "series__series_instance_uid", "instance_number", "file_size", "calling_ae"
            )
        ),
        sorted(Series.objects.values_list("series_instance_uid", "num_instances")),
        sorted(Study.objects.values_list("study_instance_uid", "num_instances", "num_series", "modalities_in_study")),
        sorted(Patient.objects.values_list("patient_id", "patient_name", "patient_sex", "num_studies")),
        sorted(Tombstone.objects.values_list("sop_instance_uid", flat=True)),
    )


def empty_index():
    for model in (Instance, Series, Study, Patient, Tombstone):
        model.objects.all().delete()


class CountingTransaction:
    """django.db.transaction with its atomic() blocks counted."""

    def __init__(self):
        self.atomic_blocks = 0

    def atomic(self, *args, **kwargs):
        self.atomic_blocks += 1
        return transaction.atomic(*args, **kwargs)


def test_a_batch_the_cache_knows_commits_as_the_general_path_would(transactional_db, header, monkeypatch):
    """With the writer's cache, a batch of new instances of known series
    (and patients it fills nothing of, no tombstone) goes as raw SQL in a
    raw transaction; every other batch takes the general path.  The same
    batches give the same outcomes and the same index either way."""
    study = generate_uid()
    first = series_headers(header, 4, study_uid=study, patient_id="P1", patient_name="")
    second = series_headers(header, 2, study_uid=study, patient_id="P1", patient_name="", series_number=2)
    named = dataclasses.replace(first[3], sop_instance_uid=generate_uid(), patient_name="Doe^Jane")
    buried = dataclasses.replace(first[3], sop_instance_uid=generate_uid())
    batches = [
        [stored(first[0])],  # new patient, study, series
        [stored(first[1]), stored(first[2])],  # known: raw
        [stored(first[1])],  # indexed already: a duplicate
        [stored(first[3]), stored(first[3])],  # twice in one batch
        [stored(second[0])],  # a new series of the known study
        [stored(second[1], calling_ae="CT1")],  # known again: raw
        [stored(named)],  # fills the patient's name
        [stored(buried)],  # has a tombstone
    ]
    results = []
    for cache in (HierarchyCache(), None):
        counted = CountingTransaction()
        monkeypatch.setattr(index, "transaction", counted)
        outcomes = []
        for batch in batches:
            if batch[0].header is buried:
                tombstones.bury([buried.sop_instance_uid])
            outcomes.append(apply_batch(batch, cache))
        results.append((outcomes, index_snapshot()))
        atomic_blocks = counted.atomic_blocks
        empty_index()

    assert results[0] == results[1]
    assert results[0][0][1:3] == [[Outcome.STORED] * 2, [Outcome.DUPLICATE]]
    assert [row[:2] + row[3:] for row in results[0][1][3]] == [("P1", "Doe^Jane", 1)]
    assert results[0][1][4] == []  # the tombstone went with the new row
    assert atomic_blocks == len(batches)  # without a cache, every batch is Django's
    counted = CountingTransaction()
    monkeypatch.setattr(index, "transaction", counted)
    cache = HierarchyCache()
    for batch in batches:
        if batch[0].header is buried:
            tombstones.bury([buried.sop_instance_uid])
        apply_batch(batch, cache)
    assert counted.atomic_blocks == len(batches) - 2  # the two known batches were raw


def test_a_raw_batch_that_fails_writes_nothing_and_the_next_one_commits(transactional_db, header, monkeypatch):
    cache = HierarchyCache()
    first, second, third = series_headers(header, 3, study_uid=generate_uid())
    apply_batch([stored(first)], cache)

    def failing(*args):
        raise RuntimeError("failed after the insert")

    monkeypatch.setattr(index, "add_to_counters", failing)
    with pytest.raises(RuntimeError, match="after the insert"):
        apply_batch([stored(second)], cache)
    assert not Instance.objects.filter(sop_instance_uid=second.sop_instance_uid).exists()
    monkeypatch.undo()

    assert apply_batch([stored(second), stored(third)], cache) == [Outcome.STORED] * 2
    assert Series.objects.get(series_instance_uid=first.series_instance_uid).num_instances == 3


def test_a_raw_batch_whose_commit_fails_is_rolled_back(transactional_db, header):
    """A deferred constraint (here an association row that does not exist)
    fails SQLite's COMMIT, which leaves the transaction open: it is rolled
    back, so the connection takes the next batch."""
    cache = HierarchyCache()
    first, second = series_headers(header, 2, study_uid=generate_uid())
    apply_batch([stored(first)], cache)

    with pytest.raises(Exception):  # noqa: B017 - IntegrityError, of the driver or Django's
        apply_batch([stored(second, association_id=uuid.uuid4())], cache)

    assert apply_batch([stored(second)], cache) == [Outcome.STORED]
    assert Instance.objects.count() == 2


@pytest.fixture
def writer_to_start():
    w = IndexWriter()
    yield w
    w.stop(timeout=5)


def test_the_writer_indexes_what_five_threads_submit(transactional_db, header, writer_to_start):
    headers = [header(patient_id=f"P{i % 5}") for i in range(50)]
    writer_to_start.start()
    results, go = [], threading.Barrier(5)

    def submit(mine):
        go.wait()
        pending = [writer_to_start.submit(stored(h)) for h in mine]
        results.extend(p.wait(20) for p in pending)

    threads = [threading.Thread(target=submit, args=(headers[i::5],)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    assert results == [Outcome.STORED] * 50
    assert writer_to_start.jobs == 50
    assert Instance.objects.count() == 50
    assert sorted(Patient.objects.values_list("num_studies", flat=True)) == [10] * 5
    writer_to_start.stop(timeout=10)
    assert not writer_to_start._thread.is_alive()


def test_a_job_that_cannot_be_written_fails_alone(transactional_db, header, writer_to_start):
    good, bad, also_good = header(), header(), header()
    # Queued before the thread starts, so they arrive as one batch; the bad
    # one points at an association row that does not exist.
    pending = [
        writer_to_start.submit(stored(good)),
        writer_to_start.submit(stored(bad, association_id=uuid.uuid4())),
        writer_to_start.submit(stored(also_good)),
    ]
    writer_to_start.start()

    assert pending[0].wait(20) == Outcome.STORED
    with pytest.raises(IndexUnavailable):
        pending[1].wait(20)
    assert pending[2].wait(20) == Outcome.STORED
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == {
        good.sop_instance_uid,
        also_good.sop_instance_uid,
    }


def test_the_writer_lock_is_held_across_processes(db):
    """A second process's index writer waits in flock() while one commits
    (SQLite would make it sleep and poll), and goes on when it is let go."""
    if connection.vendor != "sqlite":
        pytest.skip("the writer lock is SQLite's; PostgreSQL locks rows")
    lock = WriterLock()
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    with lock:
        pid = os.fork()
        if pid == 0:  # the other process: its own WriterLock, the same file
            try:
                os.write(ready_w, b"1")
                with WriterLock():
                    os.write(done_w, b"1")
            finally:
                os._exit(0)
        assert os.read(ready_r, 1) == b"1"
        # While we hold it, the child cannot take it.
        assert select.select([done_r], [], [], 0.5)[0] == []
    assert select.select([done_r], [], [], 10)[0] == [done_r]
    assert os.read(done_r, 1) == b"1"
    os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, done_r, done_w):
        os.close(fd)


def test_the_writer_counts_the_time_it_waited_for_another_process_and_held_the_lock(transactional_db, header):
    """runscp's stop line tells how long its commits took and waited for
    other processes' (the writer lock).  Another WriterLock (its own open
    file, as another process has) holds the lock while a job is submitted."""
    if connection.vendor != "sqlite":
        pytest.skip("the writer lock is SQLite's; PostgreSQL locks rows")
    writer = IndexWriter().start()
    try:
        assert writer.summary() == "0 index jobs in 0 commits"
        with WriterLock():
            pending = writer.submit(stored(header()))
            # The writer is seen waiting in flock() (a "->" line of
            # /proc/locks on the lock file), and cannot commit while the
            # other holder has the lock.
            wait_until(_someone_waits_for_the_writer_lock, 10, interval=0.01, message="the writer waiting")
            seen_waiting = time.perf_counter()
            assert not pending.done.wait(0.3)
            released = time.perf_counter()
        assert pending.wait(20) == Outcome.STORED
        # The writer adds up its times after it has released the sender:
        # read them once its thread has ended.
        writer.stop(timeout=5)
        assert (writer.jobs, writer.batches) == (1, 1)
        assert writer.waited >= released - seen_waiting >= 0.3
        assert 0 < writer.held < writer.waited
        waited_ms = writer.waited * 1e3
        assert writer.summary() == (
            f"1 index jobs in 1 commits (1.0 a commit; per commit {writer.held * 1e3:.2f} ms committing"
            f" and {waited_ms:.2f} ms waiting for the writer lock)"
        )
    finally:
        writer.stop(timeout=5)


def _someone_waits_for_the_writer_lock():
    """A process or thread is blocked in flock() on the SQLite index's
    writer lock file (Linux: /proc/locks lists waiters after "->")."""
    inode = os.stat(f"{connection.settings_dict['NAME']}-writer.lock").st_ino
    with open("/proc/locks") as locks:
        return any("->" in line and f":{inode} " in line for line in locks)


def _synchronous(cursor):
    """The mode a connection commits with: SQLite 1 = NORMAL, 2 = FULL;
    PostgreSQL's synchronous_commit."""
    if connection.vendor == "sqlite":
        cursor.execute("PRAGMA synchronous")
        return {1: "NORMAL", 2: "FULL"}[cursor.fetchone()[0]]
    cursor.execute("SHOW synchronous_commit")
    return cursor.fetchone()[0]


def test_the_writer_commits_without_waiting_for_the_disk(transactional_db, header):
    """Its own connection does not sync at each commit (each file was synced
    before its row came; a row a power cut rolls back is indexed again from
    its file at the next start); every other connection keeps its mode."""
    writer = IndexWriter(sync_after=60).start()
    try:
        assert writer.submit(stored(header())).wait(20) == Outcome.STORED
        relaxed = writer._relaxed.cursor()
        with connection.cursor() as ours:
            if connection.vendor == "sqlite":
                assert (_synchronous(relaxed), _synchronous(ours)) == ("NORMAL", settings.PACS_SQLITE_SYNCHRONOUS)
            else:
                assert (_synchronous(relaxed), _synchronous(ours)) == ("off", "on")
        relaxed.close()
    finally:
        writer.stop(timeout=5)


def test_the_writer_syncs_once_within_its_bound_not_at_every_commit(transactional_db, header):
    lazy = IndexWriter(sync_after=60).start()
    for h in [header() for _ in range(5)]:
        assert lazy.submit(stored(h)).wait(20) == Outcome.STORED
    assert (lazy.batches, lazy.syncs) == (5, 0)
    lazy.stop(timeout=10)
    assert lazy.syncs == 1  # what was committed is synced before the thread ends

    prompt = IndexWriter(sync_after=0.05).start()
    try:
        assert prompt.submit(stored(header())).wait(20) == Outcome.STORED
        wait_until(lambda: prompt.syncs > 0, 10, interval=0.01, message="the writer's timed sync")
        assert prompt.syncs == 1
    finally:
        prompt.stop(timeout=5)
    assert prompt.syncs == 1  # nothing left to sync at the end
