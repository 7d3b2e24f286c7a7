"""What dicomnodes prunes daily (see pacs_site/retention.py): the quarantine
folder and the association log; lifecycle/rules.py adds the retention rules
and recycling (and hooks recycling to runscp's stores)."""

import datetime

from django.db import transaction
from django.utils import timezone

from dicomnodes.archive import quarantine
from dicomnodes.lifecycle import rules  # noqa: F401 (registers its pruner)
from dicomnodes.models import AssociationLog
from pacs_site.retention import prune_folder, register_pruner


def prune_quarantine(row) -> str:
    pruned = prune_folder(quarantine.folder(), days=row.quarantine_days, max_mb=row.quarantine_max_mb, pattern="*.dcm")
    return str(pruned)


def prune_association_log(row) -> str:
    """Rows older than the days, then all but the newest max rows.  Instances
    that point at a deleted row keep everything but the link (SET_NULL)."""
    deleted = 0
    if row.association_log_days:
        cutoff = timezone.now() - datetime.timedelta(days=row.association_log_days)
        deleted += _delete(AssociationLog.objects.filter(started_at__lt=cutoff))
    if row.association_log_max_rows:
        newest_first = AssociationLog.objects.order_by("-started_at").values_list("started_at", flat=True)
        last_kept = list(newest_first[row.association_log_max_rows - 1 : row.association_log_max_rows])
        if last_kept:
            deleted += _delete(AssociationLog.objects.filter(started_at__lt=last_kept[0]))
    return f"{deleted} association log rows deleted"


def _delete(queryset, batch=5000) -> int:
    """In batches: runscp's index writer waits for each, not for all."""
    deleted = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:batch])
        if not ids:
            return deleted
        with transaction.atomic():
            deleted += AssociationLog.objects.filter(pk__in=ids).delete()[1].get(AssociationLog._meta.label, 0)


register_pruner("quarantine", prune_quarantine)
register_pruner("association log", prune_association_log)
