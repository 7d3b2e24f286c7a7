"""Retention: what grows by itself is pruned once a day.

Each app registers a pruner for what it owns, in a module named `retention`
that `PacsSiteConfig.ready()` imports (as the admin finds `admin` modules):
dicomnodes the quarantine and the association log, portal the preview cache,
worklist the text of HL7 messages, pacs_site the dashboard events.  A pruner
is `func(settings: RetentionSettings) -> str` (what it did, for the log).
`prune_all()` is the daily django-q2 task (migration 0003); one pruner that
fails is logged and the others still run.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from pacs_site import events
from pacs_site.models import RetentionSettings

logger = logging.getLogger(__name__)

_PRUNERS = {}


def register_pruner(name, func):
    """`func(settings)` runs daily under `name` (registering again replaces it)."""
    _PRUNERS[name] = func


def pruners():
    return dict(_PRUNERS)


def prune_all():
    """Run every pruner with the current settings; returns {name: what it did}."""
    row = RetentionSettings.load()
    done = {}
    for name, func in _PRUNERS.items():
        try:
            done[name] = func(row)
        except Exception:
            logger.exception("retention: pruning %s failed", name)
            done[name] = "failed"
    logger.info("retention: %s", "; ".join(f"{name}: {what}" for name, what in done.items()))
    return done


# --- Folders (the quarantine, the preview cache) ----------------------------------------------


@dataclass
class FolderPruned:
    files: int = 0
    bytes: int = 0

    def __str__(self):
        return f"{self.files} files ({self.bytes / 2**20:.1f} MB) deleted"


def prune_folder(folder: Path, *, days: int, max_mb: int, pattern="**/*") -> FolderPruned:
    """Delete the files of `folder` (matching `pattern`) older than `days`,
    then the oldest until the rest is under `max_mb`; 0 = no such limit."""
    pruned = FolderPruned()
    files = []
    for path in Path(folder).glob(pattern):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if path.is_file():
            files.append((st.st_mtime, st.st_size, path))
    files.sort()  # oldest first
    cutoff = time.time() - days * 86400 if days else None
    total = sum(size for _, size, _ in files)
    limit = max_mb * 2**20 if max_mb else None
    for mtime, size, path in files:
        too_old = cutoff is not None and mtime < cutoff
        too_big = limit is not None and total > limit
        if not (too_old or too_big):
            break  # sorted by age: the rest is newer and fits
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        total -= size
        pruned.files += 1
        pruned.bytes += size
    return pruned


def _prune_events(row):
    if not row.event_days:
        return "kept"
    return f"{events.prune(days=row.event_days)} events deleted"


register_pruner("dashboard events", _prune_events)
