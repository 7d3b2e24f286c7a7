"""`manage.py reindex`: rebuild the archive index from the stored files."""

import logging
from datetime import datetime
from datetime import timezone as dt_timezone

from django.core.management.base import BaseCommand
from django.db import transaction
from pydicom.filereader import read_file_meta_info

from dicomnodes.archive.header import UnreadableDataset, read_header_file
from dicomnodes.archive.hierarchy import HierarchyCache
from dicomnodes.archive.index import IndexItem, index_instances
from dicomnodes.archive.storage import instance_path, iter_stored_files, storage_root
from dicomnodes.models import Instance, Patient, Series, Study

logger = logging.getLogger(__name__)


def _meta_ae(path):
    """Calling and called AE from the file meta we wrote ((0002,0016)/(0002,0018))."""
    try:
        meta = read_file_meta_info(path)
    except Exception:
        return "", ""
    return str(meta.get("SourceApplicationEntityTitle", "")).strip(), str(
        meta.get("ReceivingApplicationEntityTitle", "")
    ).strip()


class Command(BaseCommand):
    help = "Rebuild the archive index (patients, studies, series, instances) from the files in storage."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=500, help="instances per transaction")

    def handle(self, *args, batch=500, **options):
        root = storage_root()
        self.cache = HierarchyCache()
        with transaction.atomic():
            Instance.objects.all().delete()
            Series.objects.all().delete()
            Study.objects.all().delete()
            Patient.objects.all().delete()
        done = skipped = 0
        pending = []
        for path in iter_stored_files(root):
            try:
                header = read_header_file(path)
            except UnreadableDataset as exc:
                self.stderr.write(f"skipped {path.relative_to(root)}: {exc}")
                skipped += 1
                continue
            if instance_path(header.sop_instance_uid, root) != path:
                self.stderr.write(f"skipped {path.relative_to(root)}: not where its SOP Instance UID belongs")
                skipped += 1
                continue
            calling, called = _meta_ae(path)
            stat = path.stat()
            pending.append(
                IndexItem(
                    header=header,
                    file_size=stat.st_size,
                    file_is_new=True,
                    overwrite=False,
                    called_ae=called[:16],
                    calling_ae=calling[:16],
                    received_at=datetime.fromtimestamp(stat.st_mtime, tz=dt_timezone.utc),
                )
            )
            if len(pending) >= batch:
                done += self._flush(pending)
        done += self._flush(pending)
        return f"reindexed {done} instances ({skipped} files skipped)"

    def _flush(self, pending):
        if not pending:
            return 0
        with transaction.atomic():
            index_instances(pending, self.cache)
        n = len(pending)
        pending.clear()
        return n
