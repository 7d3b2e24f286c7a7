"""Files and index rows brought back in line: orphans at start, `reindex`.

Files are the truth.  A file can be on disk without its row: runscp was
killed between the write and the commit, or the index write failed (0110)
and the sender never sent the instance again.  Two ways repair that, through
the same path (`read_item` + `index_instances`, inside transactions, so they
may run while runscp stores):

* `index_orphans()`, at every start of runscp (`scp.server.prepare_storage`):
  a bounded scan of the files written since shortly before the newest
  indexed instance;
* `upsert_items()` and `remove_missing()`, the whole archive, for
  `manage.py reindex`.

A file without a row may also be what a deletion left when it was killed
between its commit and the unlink: its tombstone says so
(`archive.tombstones`), and both ways unlink such files instead of
indexing them (the deleted study would come back).
"""

import logging
import mmap
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from pathlib import Path

from django.db import IntegrityError, transaction
from django.db.models import Max
from pydicom.filereader import read_file_meta_info

from dicomnodes.archive.header import UnreadableDataset, read_header_file
from dicomnodes.archive.hierarchy import HierarchyCache, recount
from dicomnodes.archive.index import IndexItem, index_instances
from dicomnodes.archive.quarantine import set_aside
from dicomnodes.archive.rawsql import existing_instances
from dicomnodes.archive.storage import instance_path, storage_root
from dicomnodes.archive.structure import DEFLATED, check_structure
from dicomnodes.archive.tombstones import forget_old, pending_uids, unlink_pending
from dicomnodes.models import Instance, Patient, Series, Study

logger = logging.getLogger(__name__)

# Files written this long before the newest indexed instance are scanned too:
# with several senders (or runscp processes), the instance killed mid-way may
# have been written before others that were committed after it.
ORPHAN_MARGIN = timedelta(minutes=10)
# At most this many unindexed-looking files are read at one start; beyond,
# the log says to run `manage.py reindex`.
ORPHAN_LIMIT = 10_000
BATCH = 500


class NotAnInstance(ValueError):
    """A file in the storage folder that cannot be indexed (the reason)."""


class Unreadable(NotAnInstance):
    """A stored file that cannot be read whole: cut short, empty, not DICOM."""


def read_item(path: Path, root: Path | None = None, *, whole: bool = False) -> IndexItem:
    """The IndexItem for one stored file (header only, never the pixels,
    unless `whole`: then the structure of the whole dataset is checked
    too, as when it was received); its received_at is the file's
    modification time."""
    root = root or storage_root()
    try:
        header = read_header_file(path)
        if whole:
            check_file_structure(path)
    except UnreadableDataset as exc:
        raise Unreadable(str(exc)) from exc
    except OSError as exc:
        raise NotAnInstance(f"cannot read it: {exc.strerror or exc}") from exc
    if instance_path(header.sop_instance_uid, root) != path:
        raise NotAnInstance("not where its SOP Instance UID belongs")
    calling, called = _meta_ae(path)
    stat = path.stat()
    return IndexItem(
        header=header,
        file_size=stat.st_size,
        file_is_new=True,
        overwrite=False,
        called_ae=called[:16],
        calling_ae=calling[:16],
        received_at=datetime.fromtimestamp(stat.st_mtime, tz=dt_timezone.utc),
    )


def check_file_structure(path: Path) -> None:
    """`structure.check_structure` on a stored file's dataset (behind the
    file meta group, whose length our files always give); a file cut short
    (a power cut before its sync) fails it.  A deflated dataset is only
    read as far as its header."""
    meta = read_file_meta_info(path)
    syntax = str(meta.get("TransferSyntaxUID", ""))
    length = meta.get("FileMetaInformationGroupLength")
    if length is None:
        raise UnreadableDataset("the file meta group gives no length")
    if syntax in DEFLATED:
        return
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        with memoryview(mapped) as view:
            start = 132 + 12 + int(length)  # preamble, DICM, (0002,0000) UL, the rest of the group
            dataset = view[start:]
            try:
                check_structure(dataset, syntax)
            finally:
                dataset.release()


def _meta_ae(path):
    """Calling and called AE from the file meta we wrote ((0002,0016)/(0002,0018))."""
    try:
        meta = read_file_meta_info(path)
    except Exception:
        return "", ""
    return (
        str(meta.get("SourceApplicationEntityTitle", "")).strip(),
        str(meta.get("ReceivingApplicationEntityTitle", "")).strip(),
    )


# --- Orphans, at start ------------------------------------------------------------------


@dataclass
class OrphanScan:
    indexed: int = 0  # rows created
    skipped: int = 0  # files that are not instances (logged)
    truncated: bool = False  # the limit was reached: run reindex
    unlinked: int = 0  # files of deleted instances removed
    set_aside: int = 0  # incomplete files moved to the quarantine folder
    dropped: int = 0  # rows deleted: their files were lost or cut short


def index_orphans(*, root=None, margin=ORPHAN_MARGIN, limit=ORPHAN_LIMIT) -> OrphanScan:
    """Unlink the files of deleted instances that are still there, then
    index the recent files that have no row.

    0. tombstoned files without rows are unlinked (an interrupted deletion);
    1. cutoff = the newest indexed received_at minus `margin` (no rows at
       all: every file is a candidate);
    2. list the files newer than the cutoff: a folder not modified since
       the cutoff cannot hold a newer file (a file is linked or renamed into
       its folder after it is written), so old folders are not even listed;
    3. leave out the files of rows received since the cutoff (their paths
       are hashes of their UIDs: no file is read for them);
    4. read the headers of the rest (at most `limit`) and index them, in
       transactions; a row that appeared meanwhile (another process) makes
       its instance a duplicate, never a second row.
    """
    root = Path(root or storage_root())
    scan = OrphanScan()
    if not root.exists():
        return scan
    scan.unlinked, _ = unlink_pending(root=root)
    if scan.unlinked:
        logger.warning("unlinked %d files of deleted instances (a deletion was interrupted)", scan.unlinked)
    forget_old()
    newest = Instance.objects.aggregate(newest=Max("received_at"))["newest"]
    cutoff = (newest - margin).timestamp() if newest else None
    indexed = {}
    if newest is not None:
        since = newest - margin - timedelta(seconds=1)
        recent = Instance.objects.filter(received_at__gte=since).values_list("sop_instance_uid", "file_size")
        indexed = {instance_path(uid, root): (uid, size) for uid, size in recent.iterator()}
        scan.dropped = _drop_unsynced(indexed, root)
    pending = []
    for path in _files_newer_than(root, cutoff):
        if path in indexed:
            continue
        if len(pending) >= limit:
            scan.truncated = True
            break
        try:
            pending.append(read_item(path, root, whole=True))
        except NotAnInstance as exc:
            if isinstance(exc, Unreadable) and _ours(path, root):
                name = set_aside(path)
                logger.warning("stored file %s is incomplete (%s), moved to quarantine/%s", path.name, exc, name)
                scan.set_aside += 1
            else:
                logger.warning("storage file %s is not indexed: %s", path.relative_to(root), exc)
                scan.skipped += 1
    cache = HierarchyCache()
    for start in range(0, len(pending), BATCH):
        scan.indexed += _index_new(pending[start : start + BATCH], cache)
    if scan.indexed:
        logger.warning("indexed %d stored files that had no index row (orphans)", scan.indexed)
    if scan.truncated:
        logger.warning("more than %d stored files newer than the index were found: run `manage.py reindex`", limit)
    return scan


def _drop_unsynced(indexed: dict, root: Path) -> int:
    """The rows of the last minutes whose file is missing or cut short: with
    fsync on store, a row is committed while its file syncs, and a power
    cut can keep the row and lose the file's bytes.  Such an instance was
    never answered Success; its file is moved to the quarantine folder and
    its row deleted, so the sender's next try stores it again.  A file of
    another size than its row says that reads whole as that instance (an
    "overwrite" copy or a correction's rewrite, stopped before its row
    followed) keeps its row, which takes the file's size.  Returns the rows deleted."""
    broken, resized = [], []
    for path, (uid, size) in indexed.items():
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            broken.append(uid)
            continue
        if actual == size:
            continue
        try:
            read_item(path, root, whole=True)
        except Unreadable as exc:
            name = set_aside(path)
            logger.warning("stored file %s is cut short (%s), moved to quarantine/%s", path.name, exc, name)
            broken.append(uid)
        except NotAnInstance as exc:  # misplaced, or not readable now: reindex tells
            logger.warning("stored file %s is not the size its row says and is left as it is: %s", path.name, exc)
        else:
            resized.append((uid, actual))
    for uid, actual in resized:
        Instance.objects.filter(sop_instance_uid=uid).update(file_size=actual)
    if resized:
        logger.warning("%d index rows took the size of their files (rewritten since)", len(resized))
    if not broken:
        return 0
    dropped = forget_unsynced(broken, root)
    if dropped:
        logger.warning("deleted %d index rows whose files were lost (a power cut before their sync)", dropped)
    return dropped


def _ours(path: Path, root: Path) -> bool:
    """A name we write: the SHA-256 path of some SOP Instance UID (a file
    there that cannot be read is one cut short, not someone else's)."""
    return (
        len(path.name) == 64
        and path.parent.parent.parent == root
        and path.name.startswith(path.parent.parent.name + path.parent.name)
    )


def _files_newer_than(root: Path, cutoff: float | None):
    for first in sorted(_subfolders(root, cutoff)):
        for second in sorted(_subfolders(first, cutoff)):
            try:
                entries = list(second.iterdir())
            except FileNotFoundError:
                continue
            for path in sorted(entries):
                if path.name.startswith("."):
                    continue  # temporaries of writes in progress or crashed
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if cutoff is None or stat.st_mtime >= cutoff:
                    yield path


def _subfolders(folder: Path, cutoff: float | None):
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        if len(entry.name) != 2:
            continue
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue
        if entry.is_dir() and (cutoff is None or stat.st_mtime >= cutoff):
            found.append(entry)
    return found


def without_buried(items, unlinked=0):
    """(the items whose instance was not deleted, `unlinked` + files of
    deleted instances unlinked instead of being indexed)."""
    buried = pending_uids(i.header.sop_instance_uid for i in items)
    if not buried:
        return items, unlinked
    files, _ = unlink_pending(buried)
    return [i for i in items if i.header.sop_instance_uid not in buried], unlinked + files


def _index_new(items, cache) -> int:
    """Index `items` whose UIDs have no row; returns the rows created."""
    items, _ = without_buried(items)
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                existing = existing_instances({i.header.sop_instance_uid for i in items})
                new = [i for i in items if i.header.sop_instance_uid not in existing]
                if new:
                    index_instances(new, cache)
                return len({i.header.sop_instance_uid for i in new})
        except IntegrityError:
            # Another process inserted one of these meanwhile (PostgreSQL;
            # SQLite serialises writers): the second look sees it.
            cache.clear()
            if attempt == 2:
                raise
    return 0


# --- The whole archive (reindex) -------------------------------------------------------------

# Columns a file decides; the rest (association, received_at, demographics an
# administrator corrected) stays as the row has it.
_FILE_COLUMNS = ("sop_class_uid", "instance_number", "transfer_syntax_uid", "file_size")


@dataclass
class Upserted:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    unlinked: int = 0  # files of deleted instances removed instead


def upsert_items(items, cache, totals: Upserted) -> None:
    """Create the rows of `items` that are missing and bring the others up
    to date with their files, in one transaction.

    0. files whose instance was deleted (tombstoned) are unlinked instead;
    1. new UIDs are indexed as runscp indexes them (patients, studies and
       series found or created, counters incremented);
    2. an instance whose file names another series than its row moves there
       (as an overwrite does; the series it left is recounted);
    3. otherwise only the columns the file decides are updated, and only
       where they differ.
    """
    items, totals.unlinked = without_buried(items, totals.unlinked)
    with transaction.atomic():
        existing = existing_instances({i.header.sop_instance_uid for i in items})
        new = [i for i in items if i.header.sop_instance_uid not in existing]
        if new:
            totals.created += len({i.header.sop_instance_uid for i in new})
            index_instances(new, cache)
        old = [i for i in items if i.header.sop_instance_uid in existing]
        if not old:
            return
        series_of = dict(Series.objects.filter(pk__in=set(existing.values())).values_list("pk", "series_instance_uid"))
        moving = []
        rows = Instance.objects.in_bulk([i.header.sop_instance_uid for i in old], field_name="sop_instance_uid")
        for item in old:
            h = item.header
            if series_of.get(existing[h.sop_instance_uid]) != h.series_instance_uid:
                item.overwrite = True
                moving.append(item)
                continue
            row = rows[h.sop_instance_uid]
            wanted = dict(
                sop_class_uid=h.sop_class_uid,
                instance_number=h.instance_number,
                transfer_syntax_uid=h.transfer_syntax_uid,
                file_size=item.file_size,
            )
            changed = {k: v for k, v in wanted.items() if getattr(row, k) != v}
            if changed:
                Instance.objects.filter(pk=row.pk).update(**changed)
                totals.updated += 1
            else:
                totals.unchanged += 1
        if moving:
            index_instances(moving, cache)  # the overwrite path: moves and recounts
            totals.updated += len(moving)


def remove_missing(root=None, *, batch=BATCH) -> int:
    """Delete the rows whose file is gone, then recount and drop the series,
    studies and patients left without instances; returns the rows deleted.
    A row is deleted only if its file is still missing inside the
    transaction that deletes it (a row is committed after its file is
    written, so a live runscp never loses one)."""
    root = Path(root or storage_root())
    deleted, last = 0, 0
    while True:
        chunk = list(
            Instance.objects.filter(pk__gt=last).order_by("pk").values_list("pk", "sop_instance_uid")[: batch * 4]
        )
        if not chunk:
            break
        last = chunk[-1][0]
        gone = [pk for pk, uid in chunk if not instance_path(uid, root).exists()]
        if gone:
            deleted += _delete_without_files(Instance.objects.filter(pk__in=gone), root)
    return deleted


def forget_unsynced(uids, root=None) -> int:
    """Delete the rows of `uids` whose file is gone: a file that could not
    be synced was unlinked after its row was handed to the writer (the
    sender got a failure and sends it again).  Returns the rows deleted."""
    root = Path(root or storage_root())
    return _delete_without_files(Instance.objects.filter(sop_instance_uid__in=list(uids)), root)


def _delete_without_files(rows, root) -> int:
    """Delete those of `rows` whose file is missing inside the transaction
    that deletes them, then recount (series, studies and patients left
    empty go too)."""
    with transaction.atomic():
        found = rows.values_list("pk", "sop_instance_uid", "series_id")
        really = [(pk, series) for pk, uid, series in found if not instance_path(uid, root).exists()]
        if really:
            Instance.objects.filter(pk__in=[pk for pk, _ in really]).delete()
            recount(series_ids={series for _, series in really})
    return len(really)


def recount_everything(*, batch=BATCH) -> None:
    """Counters of every series, study and patient from the rows, a few
    hundred series per transaction (runscp's writer waits for each, not for
    the whole); rows left without instances are removed."""
    last = 0
    while True:
        ids = list(Series.objects.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch])
        if not ids:
            break
        last = ids[-1]
        with transaction.atomic():
            recount(series_ids=ids)
    with transaction.atomic():
        Study.objects.filter(series__isnull=True).delete()
        Patient.objects.filter(studies__isnull=True).delete()
