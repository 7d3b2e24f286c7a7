"""`manage.py archive verify`: the files and the index rows, compared whole.

1. the files of deleted instances still on disk (tombstoned: a deletion was
   interrupted between its commit and the unlink) are unlinked;
2. every stored file is listed; those without a row are indexed as
   runscp's start indexes orphans (`reconcile`), unless `repair` is off;
3. rows whose file is missing are reported (`manage.py reindex` deletes
   them: a row without its file is never made here).

Safe while runscp runs: indexing goes through the same transactions as
`reindex`, and a file is only unlinked under its tombstone's lock.
"""

from dataclasses import dataclass, field
from pathlib import Path

from dicomnodes.archive.hierarchy import HierarchyCache
from dicomnodes.archive.reconcile import NotAnInstance, Upserted, read_item, upsert_items
from dicomnodes.archive.storage import instance_path, iter_stored_files, storage_root
from dicomnodes.archive.tombstones import forget_old, unlink_pending
from dicomnodes.models import Instance

BATCH = 500
# Rows without a file listed by UID in the report, at most.
LISTED = 20


@dataclass
class Verified:
    files: int = 0
    unlinked: int = 0  # files of deleted instances removed
    orphans: int = 0  # files without a row
    indexed: int = 0  # of which indexed now
    skipped: list = field(default_factory=list)  # (relative path, why) of files that are not instances
    missing: int = 0  # rows whose file is gone
    missing_uids: list = field(default_factory=list)  # the first LISTED of them

    def is_clean(self):
        """Nothing left wrong: orphans indexed, no foreign file, no row without its file."""
        return self.orphans == self.indexed and not (self.skipped or self.missing)


def verify(root=None, *, repair=True, batch=BATCH) -> Verified:
    root = Path(root or storage_root())
    report = Verified()
    report.unlinked, _ = unlink_pending(root=root)
    forget_old()
    indexed = _indexed_paths(root)
    pending, cache, totals = [], HierarchyCache(), Upserted()
    for path in iter_stored_files(root):
        report.files += 1
        if indexed.pop(path, None) is not None:
            continue
        report.orphans += 1
        try:
            pending.append(read_item(path, root))
        except NotAnInstance as exc:
            report.skipped.append((str(path.relative_to(root)), str(exc)))
            continue
        if repair and len(pending) >= batch:
            upsert_items(pending, cache, totals)
            pending.clear()
    if repair and pending:
        upsert_items(pending, cache, totals)
    report.indexed = totals.created
    report.unlinked += totals.unlinked
    report.orphans -= totals.unlinked
    # What is left of the rows' paths had no file (rows written meanwhile
    # by runscp are checked again).
    for path, uid in indexed.items():
        if not path.exists():
            report.missing += 1
            if len(report.missing_uids) < LISTED:
                report.missing_uids.append(uid)
    return report


def _indexed_paths(root) -> dict:
    """path -> SOP Instance UID of every row."""
    paths = {}
    for uid in Instance.objects.values_list("sop_instance_uid", flat=True).iterator(chunk_size=5000):
        paths[instance_path(uid, root)] = uid
    return paths
