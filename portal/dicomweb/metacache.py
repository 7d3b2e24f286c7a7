"""Each instance's WADO-RS metadata, kept on disk once made.

Even read straight from the file's bytes (`rawjson`, 0.1–1.6 ms per
instance against pydicom's 1.4–15 ms), a 300-image series costs the disk
reads and the walk on every viewer open.  The
JSON of an instance is written once to `cache/metadata/<h[0:2]>/<h>.json`
(h: the stored file's name) with the file's mtime and size on its first
line; a file rewritten since (overwrite, a correction) has another stamp
and is read again.  The BulkDataURIs in it hold `ROOT`, replaced by the
request's root on the way out (staff and patient links share the cache).
The daily retention job prunes the folder with the preview cache.

In the web process the entries are written by a thread of their own
(`Writer`), after the answer: creating 300 files (and up to 256 folders)
was 38 % of a series' first metadata answer (py-spy), about 0.7 ms per
instance, which put it at Orthanc's time instead of well under it.
"""

import json
import logging
import os
import queue
import struct
import threading
import uuid
from pathlib import Path

from django.conf import settings

from portal.dicomweb import pixels as px
from portal.dicomweb import rawjson
from portal.dicomweb.instancejson import instance_json

logger = logging.getLogger(__name__)

ROOT = "@@bulkdata-root@@"  # never in a DICOM JSON value of ours: '@' is in no UI, and is escaped nowhere


def cache_folder() -> Path:
    return Path(settings.PACS_DATA_DIR) / "cache" / "metadata"


def instance_json_bytes(path: Path, root: str) -> bytes:
    """The instance's DICOM JSON object (UTF-8), BulkDataURIs under `root`."""
    stat = os.stat(path)
    stamp = f"{stat.st_mtime_ns} {stat.st_size}\n".encode()
    cached = cache_folder() / path.name[:2] / f"{path.name}.json"
    try:
        data = cached.read_bytes()
    except OSError:
        data = b""
    if data.startswith(stamp):
        body = data[len(stamp) :]
    else:
        body = json.dumps(make_json(path, lambda tag: f"{ROOT}/{tag}"), ensure_ascii=False).encode()
        (_write if _writer is None else _writer.put)(cached, stamp + body)
    return body.replace(ROOT.encode(), root.encode())


def make_json(path: Path, bulkdata_uri) -> dict:
    """The instance's DICOM JSON object: from the file's bytes where
    `rawjson` reads them as pydicom would (7–10× faster), else by pydicom."""
    try:
        return rawjson.instance_json(path, bulkdata_uri)
    except rawjson.Unusual as exc:
        logger.debug("DICOMweb metadata of %s read by pydicom: %s", path.name[:12], exc)
    except (OSError, ValueError, struct.error) as exc:  # mmap of an empty file, a short read
        logger.debug("DICOMweb metadata of %s read by pydicom: %s", path.name[:12], exc)
    return instance_json(px.locate(path), bulkdata_uri)


def _write(path: Path, data: bytes) -> None:
    """Temporary file, then rename: a reader sees the old entry or the new."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a full or read-only cache costs speed, not answers


class Writer:
    """Cache entries written by one thread, in the order they were made.
    Bounded: past MAX waiting entries an entry is not kept (it is made
    again next time: the cache costs speed, never answers)."""

    MAX = 2000

    def __init__(self):
        self._queue = queue.Queue(maxsize=self.MAX)
        self._thread = None
        self._lock = threading.Lock()

    def put(self, path: Path, data: bytes) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="metadata-cache", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((path, data))
        except queue.Full:
            pass

    def _run(self):
        while True:
            _write(*self._queue.get())


# The web process writes entries in a thread (portal/daphne_server.py sets
# PACS_METADATA_CACHE_THREAD); elsewhere (tests, commands) at once.
_writer = Writer() if os.environ.get("PACS_METADATA_CACHE_THREAD") == "1" else None
