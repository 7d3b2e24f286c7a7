"""Tombstones: the files of deleted instances, until they are unlinked.

A deletion (dicomnodes/lifecycle/deletion.py) writes one `Tombstone` per
instance in the transaction that deletes its row, and unlinks the files
only after the commit (`unlink_pending`).  A crash in between leaves files
without rows that are tombstoned: the start-up reconciliation
(`reconcile.index_orphans`) and `manage.py archive verify` unlink them
instead of indexing them again.  Never a row without its file.

Three writers meet here, serialised by locks on the tombstone rows (SQLite:
every transaction takes the write lock at BEGIN, settings.py):

* the deletion's unlink: claims pending tombstones, unlinks the files of
  those whose UID has no row again, marks them unlinked;
* the index writer (`check_new_rows`, in its transaction), when an instance
  of a deleted study arrives again: its new row is allowed if its file is
  there and is not the deleted copy, and the tombstone goes (the unlink
  will not touch the new file);
* the reconciliation: `unlink_pending` for all, before indexing orphans.

An unlinked tombstone stays a day (`KEEP_UNLINKED`): a store that found the
deleted file still there (keep-first: "a file is already there") and whose
row is committed after the unlink must learn that the file is gone.
"""

import functools
import logging
import os
from datetime import timedelta

from django.db import connection, transaction
from django.utils import timezone

from dicomnodes.archive import rawsql
from dicomnodes.archive.rawsql import existing_instances
from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Tombstone

logger = logging.getLogger(__name__)

BATCH = 500
KEEP_UNLINKED = timedelta(days=1)


class BeingDeleted(RuntimeError):
    """An instance arrived while its deleted copy was still on disk, or its
    file went with a deletion before the row was written: the store fails
    (0110) and the sender's next try stores it afresh."""


def bury(uids, *, now=None) -> None:
    """Tombstones for these SOP Instance UIDs (inside the deleting transaction)."""
    now = now or timezone.now()
    uids = list(uids)
    for start in range(0, len(uids), BATCH):
        Tombstone.objects.bulk_create(
            [Tombstone(sop_instance_uid=uid, deleted_at=now) for uid in uids[start : start + BATCH]],
            update_conflicts=True,
            unique_fields=["sop_instance_uid"],
            update_fields=["deleted_at", "unlinked_at"],
        )


def check_new_rows(items) -> None:
    """Called by the index writer, in its transaction, with the IndexItems
    that are about to get a new row.  Raises BeingDeleted for an item
    whose file is the deleted copy or is gone; otherwise the tombstones of
    these UIDs go.

    1. pending (not yet unlinked): the new row may keep the file only if
       this store wrote it (overwrite, or the unlink came first); a file
       that was "already there" is the deleted copy;
    2. unlinked: the file must be there (written after the unlink).
    """
    by_uid = {item.header.sop_instance_uid: item for item in items}
    if not by_uid:
        return
    found = _tombstones_of(list(by_uid))
    if not found:
        return
    for _pk, uid, unlinked in found:
        item = by_uid[uid]
        if not unlinked and not item.file_is_new:
            raise BeingDeleted(f"instance {uid} is being deleted; send it again")
        if unlinked and not instance_path(uid).exists():
            raise BeingDeleted(f"the file of instance {uid} went with a deletion; send it again")
    Tombstone.objects.filter(pk__in=[pk for pk, _, _ in found]).delete()


def has_tombstones(uids) -> bool:
    """Has any of these UIDs a tombstone (locked, as check_new_rows's)?"""
    return bool(_tombstones_of(list(uids)))


def _tombstones_of(uids):
    """(pk, uid, unlinked) of the tombstones of `uids`, locked.  Hand-written
    SQL: this runs in every group commit of the index writer, where the
    ORM's query compilation costs more than the query (see rawsql.py)."""
    return [(pk, uid, unlinked is not None) for pk, uid, unlinked in rawsql.execute(_tombstones_sql(len(uids)), uids)]


@functools.cache
def _tombstones_sql(n):
    qn = connection.ops.quote_name
    table = Tombstone._meta
    return "SELECT {pk}, {uid}, {unlinked} FROM {table} WHERE {uid} IN ({marks}){lock}".format(
        pk=qn(table.pk.column),
        uid=qn("sop_instance_uid"),
        unlinked=qn("unlinked_at"),
        table=qn(table.db_table),
        marks=rawsql.marks(n),
        lock=" FOR UPDATE" if connection.features.has_select_for_update else "",
    )


def unlink_pending(uids=None, *, root=None) -> tuple[int, int]:
    """Unlink the files of pending tombstones (these UIDs, or all) whose
    instance has no row; returns (files unlinked, bytes).  A tombstone
    whose instance was indexed again goes without touching the file."""
    files = size = 0
    if uids is None:
        uids_iter = _pending_batches()
    else:
        uids = list(uids)
        uids_iter = (uids[start : start + BATCH] for start in range(0, len(uids), BATCH))
    for batch in uids_iter:
        n, b = _unlink_batch(batch, root)
        files += n
        size += b
    return files, size


def _pending_batches():
    last = 0
    while True:
        rows = list(
            Tombstone.objects.filter(pk__gt=last, unlinked_at=None)
            .order_by("pk")
            .values_list("pk", "sop_instance_uid")[:BATCH]
        )
        if not rows:
            return
        last = rows[-1][0]
        yield [uid for _, uid in rows]


def _unlink_batch(uids, root):
    files = size = 0
    with transaction.atomic():
        # The lock keeps the index writer from committing a row for one of
        # these files while it is unlinked (check_new_rows waits for it).
        claimed = list(
            Tombstone.objects.select_for_update()
            .filter(sop_instance_uid__in=uids, unlinked_at=None)
            .values_list("sop_instance_uid", flat=True)
        )
        if not claimed:
            return 0, 0
        live = existing_instances(claimed)
        if live:
            Tombstone.objects.filter(sop_instance_uid__in=list(live)).delete()
        gone = [uid for uid in claimed if uid not in live]
        for uid in gone:
            path = instance_path(uid, root)
            try:
                n = path.stat().st_size
                os.unlink(path)
            except FileNotFoundError:
                continue
            files += 1
            size += n
        Tombstone.objects.filter(sop_instance_uid__in=gone).update(unlinked_at=timezone.now())
    return files, size


def pending_uids(uids) -> set:
    """The UIDs among `uids` whose file is waiting to be unlinked."""
    uids = list(uids)
    found = set()
    for start in range(0, len(uids), BATCH):
        found.update(
            Tombstone.objects.filter(sop_instance_uid__in=uids[start : start + BATCH], unlinked_at=None).values_list(
                "sop_instance_uid", flat=True
            )
        )
    return found


def forget_old(*, now=None) -> int:
    """Drop the tombstones unlinked more than KEEP_UNLINKED ago."""
    cutoff = (now or timezone.now()) - KEEP_UNLINKED
    deleted, _ = Tombstone.objects.filter(unlinked_at__lt=cutoff).delete()
    return deleted
