"""Receiving one instance: file on disk, then index row, then a status.

`store_received()` is the whole C-STORE service minus the network: the
handler in `handlers.py` passes it the raw dataset bytes and the context.
"""

import io
import logging
import uuid
from dataclasses import dataclass

from django.conf import settings

from dicomnodes.archive.fastheader import read_header_fast
from dicomnodes.archive.header import UnreadableDataset, read_header
from dicomnodes.archive.index import IndexItem, IndexUnavailable
from dicomnodes.archive.storage import StorageFull, file_meta_bytes, instance_path, write_atomically
from dicomnodes.dimse import Status

logger = logging.getLogger(__name__)



@dataclass(slots=True)
class StoreResult:
    status: int
    comment: str = ""  # Error Comment; services.status() makes it a valid LO
    outcome: str = ""  # an index Outcome on success
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""


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
) -> StoreResult:
    """Store one received dataset as received and index it.

    1. build the file meta group for the bytes as they came (no re-encoding);
    2. read the header (stops before the pixels); unreadable -> C000 and the
       bytes go to the quarantine folder so nothing is lost;
    3. write the file (temp + rename; keep-first or overwrite);
    4. hand the row to the index writer and wait for its commit.
    """
    meta = file_meta_bytes(
        sop_class_uid, sop_instance_uid, transfer_syntax_uid, source_ae=calling_ae, receiving_ae=called_ae
    )
    try:
        header = _read_header(meta, raw, transfer_syntax_uid, sop_class_uid, sop_instance_uid)
    except UnreadableDataset as exc:
        where = quarantine(meta, raw)
        logger.warning("C-STORE from %s: cannot understand the dataset (%s); bytes kept as %s", calling_ae, exc, where)
        return StoreResult(Status.CANNOT_UNDERSTAND, f"Cannot understand: {exc}")

    if header.sop_instance_uid != sop_instance_uid:
        # The dataset is the truth for the archive; the file meta must agree with it.
        logger.warning(
            "C-STORE from %s: dataset SOP Instance UID differs from the request's; stored under the dataset's",
            calling_ae,
        )
        meta = file_meta_bytes(
            header.sop_class_uid,
            header.sop_instance_uid,
            transfer_syntax_uid,
            source_ae=calling_ae,
            receiving_ae=called_ae,
        )

    path = instance_path(header.sop_instance_uid)
    try:
        is_new = write_atomically(path, (meta, raw), overwrite=overwrite, fsync=fsync)
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
    try:
        outcome = writer.submit(item).wait(wait_timeout)
    except IndexUnavailable as exc:
        logger.error("C-STORE from %s: file stored but not indexed: %s", calling_ae, exc)
        return StoreResult(Status.PROCESSING_FAILURE, f"Index unavailable: {exc}")
    return StoreResult(
        Status.SUCCESS,
        outcome=outcome,
        sop_instance_uid=header.sop_instance_uid,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
    )


def _read_header(meta, raw, transfer_syntax_uid, sop_class_uid, sop_instance_uid):
    """The fast little-endian reader, with pydicom as the judge whenever the
    fast one declines or finds the dataset wanting."""
    try:
        header = read_header_fast(
            raw, transfer_syntax_uid, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid
        )
    except UnreadableDataset:
        header = None
    return header or read_header(io.BytesIO(meta + raw))


def quarantine(meta: bytes, raw: bytes) -> str:
    """Keep bytes we could not understand, under a name of our own."""
    folder = settings.PACS_QUARANTINE_DIR
    name = f"{uuid.uuid4().hex}.dcm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(meta + raw)
    except OSError as exc:
        logger.error("cannot write to the quarantine folder: %s", exc)
        return "(not kept: quarantine folder not writable)"
    return f"quarantine/{name}"
