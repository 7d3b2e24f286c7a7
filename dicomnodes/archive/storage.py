"""Files on disk: where an instance lives and how it is written.

An instance is written once, as received: 128-byte preamble, "DICM", a file
meta group we build, then the dataset bytes exactly as they came over the
association.  The path comes from a SHA-256 of the SOP Instance UID, never
from a dataset value, so nothing a peer sends can steer a path.
"""

import ctypes
import errno
import hashlib
import os
import struct
import time
import uuid
from pathlib import Path

from django.conf import settings

# Our implementation identity in the file meta (PS3.10 7.1). A 2.25 UUID-derived
# UID so that we need no registered root.
IMPLEMENTATION_CLASS_UID = "2.25.219661308934613372280001941205547717699"
IMPLEMENTATION_VERSION_NAME = "PACSSRV_1"

_PREAMBLE = b"\x00" * 128 + b"DICM"
_made_dirs: set = set()


def storage_root() -> Path:
    return Path(settings.PACS_STORAGE_DIR)


def instance_path(sop_instance_uid: str, root: Path | None = None) -> Path:
    return Path(instance_file(sop_instance_uid, root))


def instance_file(sop_instance_uid: str, root=None) -> str:
    """`instance_path()` as a string: what the ingest path uses (building
    the Path objects cost more than the hash; see docs/storage.md)."""
    digest = hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()
    return f"{root or settings.PACS_STORAGE_DIR}/{digest[0:2]}/{digest[2:4]}/{digest}"


def _element(group_elem: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    tag = struct.pack("<HH", 0x0002, group_elem)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def file_meta_bytes(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    *,
    source_ae: str = "",
    receiving_ae: str = "",
) -> bytes:
    """Preamble, "DICM" and the File Meta Information group (PS3.10 7.1).

    Built by hand: pydicom's write_file_meta_info costs more per instance than
    the whole rest of this module, and the group is always the same shape.
    (0002,0016) Source AE holds the calling AE and (0002,0018) Receiving AE the
    called AE, so that `reindex` can restore them.
    """
    body = b"".join(
        [
            _element(0x0001, b"OB", b"\x00\x01", b"\x00"),
            _element(0x0002, b"UI", sop_class_uid.encode("ascii"), b"\x00"),
            _element(0x0003, b"UI", sop_instance_uid.encode("ascii"), b"\x00"),
            _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii"), b"\x00"),
            _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii"), b"\x00"),
            _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii"), b" "),
        ]
        + ([_element(0x0016, b"AE", source_ae.encode("ascii"), b" ")] if source_ae else [])
        + ([_element(0x0018, b"AE", receiving_ae.encode("ascii"), b" ")] if receiving_ae else [])
    )
    group_length = struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HI", 4, len(body))
    return _PREAMBLE + group_length + body


class StorageFull(OSError):
    """The disk (or quota) is full: the sender gets A700."""


def write_atomically(path: Path, chunks, *, overwrite: bool, fsync: bool) -> bool:
    """Write `chunks` to `path` through a temporary file in the same folder.

    Returns True if the file is new (or was overwritten), False if a file was
    already there and `overwrite` is off (it is left untouched).  A reader
    never sees a partial file: the temporary is linked or renamed into place
    only once complete.  Raises StorageFull on ENOSPC/EDQUOT.  With `fsync`
    the file (and its folder) is on disk before this returns, and before it
    takes the place of an earlier copy.
    """
    if not overwrite:
        placed = place(path, chunks)
        placed.finish(fsync)
        return placed.is_new
    folder, tmp, fd = _temporary(path)
    try:
        try:
            write_chunks(fd, chunks)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(folder)
        return True
    except OSError as exc:
        _discard(tmp)
        _raise_if_full(exc, path)
        raise


class Placed:
    """A file written and linked under its final name, "keep the first"
    (`place()`), whose bytes may not be on disk yet: `finish(fsync)` syncs
    it and its folder.  `is_new` is False when a file was already there; with
    fsync that file is synced too, as it may be another association's that
    is not yet on disk."""

    def __init__(self, path: Path, fd: int, is_new: bool):
        self.path = path
        self.is_new = is_new
        self._fd = fd

    def finish(self, fsync: bool) -> None:
        """Sync the file and its folder (with `fsync`); raises StorageFull or
        OSError, and then a file this store wrote is unlinked (it is not on
        disk for sure: its sender is answered a failure and sends it again)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if not fsync:
            os.close(fd)
            return
        try:
            if not self.is_new:  # the kept file instead of our unlinked temporary
                os.close(fd)
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(os.path.dirname(self.path))
        except OSError as exc:
            if self.is_new:
                _discard(self.path)
            _raise_if_full(exc, self.path)
            raise


def place(path: Path, chunks) -> Placed:
    """Write `chunks` to a file without a name in `path`'s folder, then link
    it to `path` unless a file is there ("keep the first", without a race
    between two associations sending the same instance); the file is
    complete before its name appears, so a reader (or a crash of this
    process) never finds a partial file there.  The caller syncs it with
    `Placed.finish()`: in between it may hand the file's index row to the
    writer, whose commit then runs while the disk syncs (store_received;
    docs/storage.md, Durability).  Raises StorageFull on ENOSPC/EDQUOT.

    The nameless file is an O_TMPFILE, linked by its descriptor through
    /proc: no temporary name to make and unlink (a directory entry and a
    random name fewer per instance), and nothing left behind by a crash.
    Where the file system or /proc does not allow it, a named temporary."""
    fd = nameless_file(path)
    if fd is None:
        return _place_named(path, chunks)
    try:
        write_chunks(fd, chunks)
        is_new = link_nameless(fd, path)
    except OSError as exc:
        os.close(fd)
        _raise_if_full(exc, path)
        raise
    return Placed(path, fd, is_new)


def nameless_file(path) -> int | None:
    """A file without a name (O_TMPFILE) in `path`'s folder, open for
    reading and writing, for `link_nameless()` to give it `path` once
    complete; None where the file system or /proc does not allow it (then
    never asked again in this process)."""
    return _nameless(path) if _NAMELESS.usable else None


def link_nameless(fd, path) -> bool:
    """Give the complete nameless file `fd` the name `path` unless a file
    is there ("keep the first"): True when it got it.  `fd` stays open
    (the caller's, for Placed.finish); raises StorageFull or OSError."""
    try:
        os.link(f"self/fd/{fd}", path, src_dir_fd=_NAMELESS.proc, follow_symlinks=True)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        _raise_if_full(exc, path)
        raise


class _Nameless:
    """Whether files are placed as O_TMPFILEs (decided at the first one),
    and /proc, opened once, to link them by their descriptor ("self" is
    looked up at each link: a forked process links its own)."""

    def __init__(self):
        self.usable = hasattr(os, "O_TMPFILE")
        self.proc = None

    def check(self, fd) -> bool:
        """Can the nameless file `fd` be linked by its descriptor here?"""
        proc = None
        try:
            proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            os.stat(f"self/fd/{fd}", dir_fd=proc)
        except OSError:
            self.usable = False
            if proc is not None:
                os.close(proc)
            return False
        self.proc = proc
        return True


_NAMELESS = _Nameless()


def _nameless(path):
    """An O_TMPFILE in `path`'s folder; None where the
    file system or /proc does not allow one (then never asked again)."""
    folder = _made_folder(path)
    try:
        # Read and write: a streamed data set is mapped to read its header (spool.SpoolFile).
        fd = os.open(folder, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)  # patient data: the owner only
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            _NAMELESS.usable = False
            return None
        _raise_if_full(exc, path)
        raise
    if _NAMELESS.proc is None and not _NAMELESS.check(fd):
        os.close(fd)
        return None
    return fd


def _place_named(path, chunks) -> Placed:
    """place() through a named temporary: linked to `path`, then unlinked."""
    folder, tmp, fd = _temporary(path)
    try:
        write_chunks(fd, chunks)
        try:
            os.link(tmp, path)
            is_new = True
        except FileExistsError:
            is_new = False
        os.unlink(tmp)
    except OSError as exc:
        os.close(fd)
        _discard(tmp)
        _raise_if_full(exc, path)
        raise
    return Placed(path, fd, is_new)


def _made_folder(path) -> str:
    """`path`'s folder (a string), made if it is not there yet."""
    folder = os.path.dirname(path)
    if folder not in _made_dirs:
        os.makedirs(folder, exist_ok=True)
        _made_dirs.add(folder)
    return folder


def _temporary(path):
    """(folder, temporary path, fd open for writing) next to `path` (a str
    or a Path; the folder and temporary are strings)."""
    folder = _made_folder(path)
    tmp = f"{folder}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    try:
        return folder, tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # patient data: the owner only
    except OSError as exc:
        _raise_if_full(exc, path)
        raise


def _discard(path: Path) -> None:
    """Unlink on a failure's way out: never raises over the failure."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _raise_if_full(exc: OSError, path: Path) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not isinstance(exc, StorageFull):
        raise StorageFull(exc.errno, f"no space left for {os.path.basename(path)[:12]}…") from exc


class FileRegion:
    """Bytes of another file, copied by the kernel (`copy_file_range`):
    a spooled dataset reaches its file without passing through memory."""

    __slots__ = ("fd", "offset", "length")

    def __init__(self, fd: int, offset: int, length: int):
        self.fd, self.offset, self.length = fd, offset, length

    def __len__(self):
        return self.length

    def copy_to(self, fd: int) -> None:
        offset, left = self.offset, self.length
        while left:
            try:
                n = os.copy_file_range(self.fd, fd, left, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                n = os.sendfile(fd, self.fd, offset, left)
            if n == 0:
                raise OSError(errno.EIO, "the source file ended early")
            offset += n
            left -= n


def write_chunks(fd: int, chunks) -> None:
    """Write buffers (gathered with writev) and FileRegions in order."""
    pending = []
    for chunk in chunks:
        if isinstance(chunk, FileRegion):
            _write_all(fd, pending)
            pending = []
            chunk.copy_to(fd)
        else:
            pending.append(chunk)
    _write_all(fd, pending)


def _write_all(fd: int, chunks) -> None:
    views = [memoryview(c) for c in chunks if len(c)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _libc_sync_file_range():
    """libc's sync_file_range (Linux; the os module has none), or None."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range  # the process's own symbols: libc's
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages; do not wait


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing these bytes of `fd` to disk now,
    without waiting (sync_file_range SYNC_FILE_RANGE_WRITE): a data set
    written while it arrives goes to disk while the rest arrives, and the
    fsync that makes it durable waits for less.  Measured here: fsync of a
    525 KB new file 0.52-0.57 ms after plain writes, 0.11 ms after writes
    whose writeback was started (medians of 40, 1 ms between two 256 KB
    writes).  Only a hint: durability still comes from the fsync.  Does
    nothing where the call is missing or refused."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(root: Path | None = None, *, older_than: float = 3600.0) -> int:
    """Delete temporary files left by a crash (older than an hour: a live
    process in another runscp may still be writing newer ones)."""
    root = root or storage_root()
    if not root.exists():
        return 0
    cutoff = time.time() - older_than
    removed = 0
    for tmp in root.glob("*/*/.*.tmp"):
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def iter_stored_files(root: Path | None = None):
    """Every stored instance file (temporaries excluded)."""
    root = root or storage_root()
    if not root.exists():
        return
    for first in sorted(root.iterdir()):
        if not first.is_dir() or len(first.name) != 2:
            continue
        for second in sorted(first.iterdir()):
            if not second.is_dir():
                continue
            for path in sorted(second.iterdir()):
                if not path.name.startswith(".") and path.is_file():
                    yield path
