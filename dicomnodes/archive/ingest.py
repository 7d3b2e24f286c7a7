"""Receiving one instance: file on disk, then index row, then a status.

`store_received()` is the whole C-STORE service minus the network: the
handler in `handlers.py` passes it the raw dataset bytes and the context.
"""

import dataclasses
import io
import logging
import os
import uuid
from dataclasses import dataclass

from django.conf import settings

from dicomnodes.archive.fastheader import LAST_TAG, WANTED_TAGS, read_header_fast
from dicomnodes.archive.header import UnreadableDataset, read_header
from dicomnodes.archive.index import IndexItem, IndexUnavailable
from dicomnodes.archive.reconcile import forget_unsynced
from dicomnodes.archive.storage import (
    StorageFull,
    file_meta_bytes,
    instance_file,
    place,
    storage_root,
    write_atomically,
    write_chunks,
)
from dicomnodes.archive.structure import DEFLATED, EXPLICIT_VR_LITTLE_ENDIAN, check_structure, inflate_bounded
from dicomnodes.dimse import Status
from dicomnodes.lifecycle import diskguard

logger = logging.getLogger(__name__)

# The largest a deflated dataset may inflate to, unless the caller says
# (DicomServerSettings.max_inflated_mb).
DEFAULT_MAX_INFLATED = 1024 * 2**20


@dataclass(slots=True)
class StoreResult:
    status: int
    comment: str = ""  # Error Comment; services.status() makes it a valid LO
    outcome: str = ""  # an index Outcome on success
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


def received_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid, *, calling_ae, called_ae) -> bytes:
    """The file meta group of an instance received from `calling_ae` by
    `called_ae` (which `reindex` reads back)."""
    return file_meta_bytes(
        sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae=calling_ae, receiving_ae=called_ae
    )


def placement(sop_class_uid, sop_instance_uid, transfer_syntax_uid, *, calling_ae, called_ae) -> tuple[bytes, str]:
    """(file meta bytes, path) that `store_received` gives an instance
    received as requested: what a streaming sink writes first and where
    (`scp.sinks.StoreSink`).  The path comes from a hash of the UID."""
    meta = received_meta(
        sop_class_uid, sop_instance_uid, transfer_syntax_uid, calling_ae=calling_ae, called_ae=called_ae
    )
    return meta, instance_file(sop_instance_uid)


def store_received(
    raw: bytes,
    transfer_syntax_uid: str,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    called_ae: str,
    calling_ae: str,
    association_id,
    overwrite: bool,
    fsync: bool,
    writer,
    wait_timeout: float,
    max_inflated: int = DEFAULT_MAX_INFLATED,
    spool=None,
) -> StoreResult:
    """Store one received dataset as received and index it.

    0. the disk guard: under the minimum free space -> A700 with the
       reason, and nothing is written (`lifecycle.diskguard`);
    1. build the file meta group for the bytes as they came (no re-encoding);
    2. check the structure of the whole dataset (`archive.structure`; a
       deflated one is inflated at most to `max_inflated` bytes), then read
       the header (stops before the pixels); malformed or unreadable -> C000
       with the reason, and the bytes go to the quarantine folder so nothing
       is lost;
    3. write the file: a temporary, linked to its name once complete
       (keep-first), or synced and then renamed over the old copy
       (overwrite);
    4. hand the row to the index writer, sync the kept-first file and its
       folder while the row commits, then wait for the commit: Success
       only once both are done; a file that cannot be synced is removed
       with its row (A700).

    `raw` may be a view of a `spool.SpoolFile` (given as `spool`): when the
    spool is already this instance's file (made for its path, beginning with
    this file meta), it is linked under its name as it is (keep-first);
    otherwise its bytes are copied file to file.
    """
    body = spool.region() if spool is not None else raw
    meta = received_meta(
        sop_class_uid, sop_instance_uid, transfer_syntax_uid, calling_ae=calling_ae, called_ae=called_ae
    )
    # A StoreSink's spool had the guard count its bytes as they arrived:
    # counted again, an instance that fits would be refused near the minimum.
    too_full = diskguard.check(len(meta) + len(raw)) if spool is None or not spool.guarded else None
    if too_full is not None:
        logger.error("C-STORE from %s refused by the disk guard: %s", calling_ae, too_full)
        return StoreResult(Status.OUT_OF_RESOURCES, too_full)
    try:
        header = read_checked_header(meta, raw, transfer_syntax_uid, sop_class_uid, sop_instance_uid, max_inflated)
    except UnreadableDataset as exc:
        where = quarantine(meta, body)
        logger.warning("C-STORE from %s: cannot understand the dataset (%s); bytes kept as %s", calling_ae, exc, where)
        return StoreResult(Status.CANNOT_UNDERSTAND, f"Cannot understand: {exc}")

    if header.sop_instance_uid != sop_instance_uid:
        # The dataset is the truth for the archive; the file meta must agree with it.
        logger.warning(
            "C-STORE from %s: dataset SOP Instance UID differs from the request's; stored under the dataset's",
            calling_ae,
        )
        meta = received_meta(
            header.sop_class_uid,
            header.sop_instance_uid,
            transfer_syntax_uid,
            calling_ae=calling_ae,
            called_ae=called_ae,
        )

    path = instance_file(header.sop_instance_uid)
    try:
        if overwrite:
            placed = None
            is_new = write_atomically(path, (meta, body), overwrite=True, fsync=fsync)
        else:
            placed = (spool is not None and spool.adopt(path, meta)) or place(path, (meta, body))
            is_new = placed.is_new
    except StorageFull as exc:
        logger.error("C-STORE from %s: out of disk space: %s", calling_ae, exc)
        return StoreResult(Status.OUT_OF_RESOURCES, "Out of resources: storage is full")
    except OSError as exc:
        logger.error("C-STORE from %s: cannot write the file: %s", calling_ae, exc)
        return StoreResult(Status.OUT_OF_RESOURCES, f"Out of resources: {exc.strerror or exc}")

    item = IndexItem(
        header=header,
        file_size=len(meta) + len(raw),
        file_is_new=is_new,
        overwrite=overwrite,
        called_ae=called_ae,
        calling_ae=calling_ae,
        association_id=association_id,
    )
    # The row is committed while the disk syncs the file (keep-first): the
    # sender's Success still waits for both.
    pending = writer.submit(item)
    failed = _finish(placed, fsync, calling_ae)
    try:
        outcome = pending.wait(wait_timeout)
    except IndexUnavailable as exc:
        logger.error("C-STORE from %s: file stored but not indexed: %s", calling_ae, exc)
        return failed or StoreResult(Status.PROCESSING_FAILURE, f"Index unavailable: {exc}")
    if failed:
        if is_new:
            forget_unsynced([header.sop_instance_uid])
        return failed
    return StoreResult(
        Status.SUCCESS,
        outcome=outcome,
        sop_instance_uid=header.sop_instance_uid,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
    )


def _finish(placed, fsync, calling_ae) -> StoreResult | None:
    """Sync a placed file; the failure's StoreResult, or None.  A new file
    that cannot be synced is gone again (Placed.finish): the sender sends
    it again."""
    if placed is None:
        return None
    try:
        placed.finish(fsync)
    except StorageFull as exc:
        logger.error("C-STORE from %s: out of disk space: %s", calling_ae, exc)
        return StoreResult(Status.OUT_OF_RESOURCES, "Out of resources: storage is full")
    except OSError as exc:
        logger.error("C-STORE from %s: cannot sync the file: %s", calling_ae, exc)
        return StoreResult(Status.OUT_OF_RESOURCES, f"Out of resources: {exc.strerror or exc}")
    return None


def read_checked_header(meta, raw, transfer_syntax_uid, sop_class_uid, sop_instance_uid, max_inflated):
    """Check the dataset's structure, then read its header: the fast
    little-endian reader, with pydicom as the judge whenever the fast one
    declines or finds the dataset wanting."""
    if transfer_syntax_uid in DEFLATED:
        return _read_deflated_header(raw, transfer_syntax_uid, sop_class_uid, sop_instance_uid, max_inflated)
    found = check_structure(raw, transfer_syntax_uid, collect=WANTED_TAGS, collect_until=LAST_TAG)
    try:
        header = read_header_fast(
            raw, transfer_syntax_uid, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid, found=found
        )
    except UnreadableDataset:
        header = None
    if header is None:
        with _JoinedFile(meta, raw) as joined:
            header = read_header(joined)
    return header


def _read_deflated_header(raw, transfer_syntax_uid, sop_class_uid, sop_instance_uid, max_inflated):
    """A deflated dataset is inflated, a megabyte at a time, into a temporary
    file behind an explicit VR little endian file meta; its structure and
    header are read from there.  pydicom would inflate all of it in memory,
    however large (a 204 KB dataset can inflate to gigabytes)."""
    meta = file_meta_bytes(sop_class_uid, sop_instance_uid, EXPLICIT_VR_LITTLE_ENDIAN)
    folder = storage_root()  # the disk the file goes to, not a RAM-backed /tmp
    folder.mkdir(parents=True, exist_ok=True)
    with inflate_bounded(raw, limit=max_inflated, prefix=meta, folder=folder) as inflated:
        with memoryview(inflated) as whole:
            body = whole[len(meta) :]
            try:
                check_structure(body, EXPLICIT_VR_LITTLE_ENDIAN)
                header = read_header_fast(
                    body, EXPLICIT_VR_LITTLE_ENDIAN, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid
                )
            finally:
                body.release()
        if header is None:
            with _JoinedFile(inflated) as joined:
                header = read_header(joined)
    return dataclasses.replace(header, transfer_syntax_uid=transfer_syntax_uid)


class _JoinedFile(io.RawIOBase):
    """A read-only file object over buffers one after the other (bytes,
    memoryviews, an mmap), for pydicom, which reads, seeks and tells and
    stops before the pixel data: nothing is joined or copied whole."""

    def __init__(self, *parts):
        self._parts = parts
        self._starts = []
        total = 0
        for part in parts:
            self._starts.append(total)
            total += len(part)
        self._size = total
        self._pos = 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def readinto(self, buffer):
        wanted = min(len(buffer), self._size - self._pos)
        done = 0
        for part, start in zip(self._parts, self._starts):
            if done == wanted:
                break
            end = start + len(part)
            if self._pos + done >= end:
                continue
            at = self._pos + done - start
            n = min(wanted - done, len(part) - at)
            buffer[done : done + n] = part[at : at + n]
            done += n
        self._pos += done
        return done

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self):
        return self._pos

    def close(self):
        self._parts = ()
        super().close()


def quarantine(meta: bytes, raw) -> str:
    """Keep bytes we could not understand, under a name of our own."""
    folder = settings.PACS_QUARANTINE_DIR
    name = f"{uuid.uuid4().hex}.dcm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_chunks(fd, (meta, raw))
        finally:
            os.close(fd)
    except OSError as exc:
        logger.error("cannot write to the quarantine folder: %s", exc)
        return "(not kept: quarantine folder not writable)"
    return f"quarantine/{name}"
