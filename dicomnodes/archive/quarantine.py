"""The quarantine folder: the bytes of datasets we could not understand,
kept for inspection (`ingest.quarantine()` writes them, named by a random
UUID: `<32 hex>.dcm`).  The admin lists, downloads and deletes them; the
retention pruner bounds the folder.  A name from a request is only ever
used after it matched that pattern: no path is built from anything else."""

import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path

from django.conf import settings

NAME = re.compile(r"[0-9a-f]{32}\.dcm")


@dataclass(frozen=True)
class QuarantinedFile:
    name: str
    size: int
    modified: datetime


def folder() -> Path:
    return Path(settings.PACS_QUARANTINE_DIR)


def listing() -> list[QuarantinedFile]:
    """The quarantined files, newest first."""
    found = []
    if not folder().is_dir():
        return found
    for path in folder().iterdir():
        if not NAME.fullmatch(path.name):
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        found.append(QuarantinedFile(path.name, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=dt_timezone.utc)))
    return sorted(found, key=lambda f: (f.modified, f.name), reverse=True)


def path_of(name: str) -> Path | None:
    """The file called `name`, if `name` is a quarantine name and it exists."""
    if not NAME.fullmatch(name or ""):
        return None
    path = folder() / name
    return path if path.is_file() else None


def delete(name: str) -> bool:
    path = path_of(name)
    if path is None:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def set_aside(path: Path) -> str:
    """Move a stored file that must not stay where it is (incomplete after a
    power cut) into the quarantine folder; its name there, or "" if it
    could not be moved (it is then unlinked, so that the instance can be
    stored again)."""
    target = folder() / f"{uuid.uuid4().hex}.dcm"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        return target.name
    except OSError:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return ""
