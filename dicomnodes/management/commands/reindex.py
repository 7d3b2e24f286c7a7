"""`manage.py reindex`: bring the archive index in line with the stored files.

In place, and safe while runscp runs (`dicomnodes.archive.reconcile`):
rows are created for files without one and updated from their files, rows
whose file is gone are deleted, counters are recomputed.  Patients and
studies that still have instances keep their rows, so their patient links
and corrected demographics survive.
"""

import logging

from django.core.management.base import BaseCommand, CommandError

from dicomnodes.archive.hierarchy import HierarchyCache
from dicomnodes.archive.reconcile import (
    NotAnInstance,
    Upserted,
    read_item,
    recount_everything,
    remove_missing,
    upsert_items,
)
from dicomnodes.archive.storage import iter_stored_files, storage_root
from dicomnodes.models import Instance

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Bring the archive index (patients, studies, series, instances) in line with the files in storage: "
        "index files without a row, update rows from their files, delete rows whose file is gone. "
        "Safe while runscp runs."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=500, help="instances per transaction")

    def handle(self, *args, batch=500, **options):
        root = storage_root()
        if not root.is_dir():
            raise CommandError(f"no storage folder at {root} (is PACS_DATA_DIR right?)")
        cache, totals = HierarchyCache(), Upserted()
        files = skipped = 0
        pending = []
        for path in iter_stored_files(root):
            files += 1
            try:
                pending.append(read_item(path, root))
            except NotAnInstance as exc:
                self.stderr.write(f"skipped {path.relative_to(root)}: {exc}")
                skipped += 1
                continue
            if len(pending) >= batch:
                upsert_items(pending, cache, totals)
                pending.clear()
        if pending:
            upsert_items(pending, cache, totals)
        if files == 0 and Instance.objects.exists():
            # An empty or unmounted storage folder would otherwise empty the index.
            raise CommandError(f"no files under {root} but instances are indexed: nothing deleted")
        removed = remove_missing(root, batch=batch)
        recount_everything(batch=batch)
        return (
            f"reindexed {files - skipped} files: {totals.created} rows created, {totals.updated} updated, "
            f"{totals.unchanged} unchanged, {removed} deleted (file gone); {skipped} files skipped"
        )
