"""Disc content: how many discs a job needs, and each disc's folder.

A disc folder follows the IHE PDI layout:

    DICOMDIR            the DICOM File-set directory (pydicom's FileSet)
    DICOM/PT000000/ST000000/SE000000/IM000000 …   8-character File IDs
    README.TXT          institution, patient, studies
    …                   the viewer folder's contents, when one is set

Names come from pydicom's generated File IDs and our own job IDs, never from
a dataset value.  The stored files are copied byte for byte; only header-only
copies go through pydicom (to build the DICOMDIR records), in
`dicomnodes.archive.fileset`, which the ZIP download uses too.
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dicomnodes.archive.fileset import FileSetError, plan_fileset
from pacs_site.datafiles import ROBOT_READABLE_DIR, ROBOT_READABLE_FILE

SECTOR = 2048  # bytes per sector on CD and DVD
# Room kept per instance for its DICOMDIR records and directory entries, and
# per disc for the DICOMDIR header, README.TXT and the directories.
RECORD_ALLOWANCE = 1024
DISC_ALLOWANCE = 64 * 1024
RESERVED_NAMES = {"dicomdir", "dicom", "readme.txt"}


class DiscError(Exception):
    """The content cannot be put on discs (too big, unreadable, …)."""


def on_disc(size: int) -> int:
    """Bytes a file of `size` bytes takes: whole sectors."""
    return -(-size // SECTOR) * SECTOR


@dataclass
class Item:
    """One instance to put on a disc."""

    pk: int
    path: Path
    size: int

    @property
    def cost(self) -> int:
        return on_disc(self.size) + RECORD_ALLOWANCE


def folder_size(folder) -> int:
    if not folder:
        return 0
    return sum(on_disc(p.stat().st_size) for p in Path(folder).rglob("*") if p.is_file())


def plan_discs(items, *, disc_type, cd_capacity, dvd_capacity, extra=0):
    """(media, [[Item, …] per disc]) for `items` in their order.

    1. automatic: a CD if everything fits on one, else DVDs;
    2. the items fill the discs in order (a series stays on consecutive
       discs); `extra` (the viewer) goes on every disc;
    3. an instance that fits on no disc is an error, not a silent skip.
    """
    total = DISC_ALLOWANCE + extra + sum(item.cost for item in items)
    if disc_type == "auto":
        media = "cd" if total <= cd_capacity else "dvd"
    else:
        media = disc_type
    capacity = cd_capacity if media == "cd" else dvd_capacity
    room = capacity - DISC_ALLOWANCE - extra
    if room <= 0:
        raise DiscError(f"the viewer folder ({extra} bytes) leaves no room on a {media.upper()}")
    discs, current, used = [], [], 0
    for item in items:
        if item.cost > room:
            raise DiscError(f"an instance of {item.size} bytes does not fit on a {media.upper()} ({capacity} bytes)")
        if current and used + item.cost > room:
            discs.append(current)
            current, used = [], 0
        current.append(item)
        used += item.cost
    if current:
        discs.append(current)
    return media, discs


# --- One disc folder ----------------------------------------------------------------------------


def write_fileset(folder: Path, sources, *, fileset_id: str, fallback_date: str):
    """The DICOM File-set of `sources` (stored files) in `folder`: DICOMDIR at
    the root, the stored files, byte for byte, under DICOM/ (the layout and
    the DICOMDIR come from `dicomnodes.archive.fileset`)."""
    try:
        plan = plan_fileset(sources, fileset_id=fileset_id, folder="DICOM", fallback_date=fallback_date)
    except FileSetError as exc:
        raise DiscError(str(exc)) from exc
    (folder / "DICOMDIR").write_bytes(plan.dicomdir)
    for name, stored in plan.files:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stored, target)


def copy_viewer(viewer: Path, folder: Path):
    """The viewer folder's contents at the disc root (never over our files)."""
    for entry in Path(viewer).iterdir():
        if entry.name.lower() in RESERVED_NAMES:
            continue
        target = folder / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target)
        else:
            shutil.copyfile(entry, target)


def readable_by_the_robot(disc: Path, staging: Path):
    """Open a disc folder (and the staging folder holding it) to the robot.

    Everything else the server writes is its owner's alone (umask 077,
    pacs_site/datafiles.py), but the robot software reads these files as
    another user or over a share (PTBurn's `Data=` and TD Bridge's `DATA=`
    name this folder as the robot's PC sees it): folders 0755, files 0644,
    as the server made them before.  A staging folder that is not ours (a
    share an administrator set up) keeps its own mode.
    """
    for path in [staging, disc, *disc.rglob("*")]:
        try:
            path.chmod(ROBOT_READABLE_DIR if path.is_dir() else ROBOT_READABLE_FILE)
        except PermissionError:
            pass


def stage_disc(folder: Path, sources, *, fileset_id, readme: str, viewer=None, fallback_date="19000101") -> int:
    """Build one disc folder; returns its size on disc (bytes).  The folder
    is built under a temporary name and renamed, so a half-built disc never
    carries the name a job file points at."""
    folder = Path(folder)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write_fileset(building, sources, fileset_id=fileset_id, fallback_date=fallback_date)
        (building / "README.TXT").write_bytes(readme.replace("\n", "\r\n").encode("utf-8-sig"))
        if viewer:
            copy_viewer(Path(viewer), building)
        readable_by_the_robot(building, folder.parent)
        os.replace(building, folder)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return folder_size(folder)
