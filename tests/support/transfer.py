"""Peers for the transfer tests: a small pynetdicom storage SCP that records
what it receives and how many associations it holds at once, a pynetdicom
query/retrieve SCP that serves a few files, and a TCP listener that accepts
connections and never says a word."""

import socket
import threading
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, StoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.support.processes import dcmtk, free_port


class _Served:
    """A pynetdicom AE serving on 127.0.0.1:`self.port` in threads of its own."""

    server = None

    def _serve(self, ae, handlers):
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server = None


class RecordingScp(_Served):
    """A storage SCP (AE `RECORDER`) on 127.0.0.1.

    `delay`: seconds each C-STORE takes; `abort_after`: abort the first
    association after this many instances (a peer that goes away mid-job).
    """

    def __init__(self, *, port=None, ae_title="RECORDER", delay=0.0, abort_after=None):
        self.port = port or free_port()
        self.ae_title = ae_title
        self.delay = delay
        self.abort_after = abort_after
        self.received = []  # SOP Instance UIDs, in arrival order (duplicates kept)
        self.associations = 0
        self.aborted = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()
        self.server = None

    def start(self):
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.maximum_associations = 50
        handlers = [
            (evt.EVT_ESTABLISHED, self._opened),
            (evt.EVT_RELEASED, self._closed),
            (evt.EVT_ABORTED, self._aborted),
            (evt.EVT_C_STORE, self._store),
        ]
        return self._serve(ae, handlers)

    def _opened(self, event):
        with self._lock:
            self.associations += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)

    def _closed(self, event):
        with self._lock:
            self.concurrent -= 1

    def _aborted(self, event):
        with self._lock:
            self.aborted += 1
            self.concurrent -= 1

    def _store(self, event):
        if self.delay:
            time.sleep(self.delay)
        with self._lock:
            if self.abort_after is not None and self.associations == 1 and len(self.received) >= self.abort_after:
                self.abort_after = None
                threading.Thread(target=event.assoc.abort, daemon=True).start()
                return 0xA700
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


class PlainQrScp(_Served):
    """A study-root C-FIND and C-GET SCP (AE `PLAINQR`) on 127.0.0.1 serving
    the files `paths`, as a small archive does: its study answers leave the
    optional keys SOP Classes in Study and Number of Study Related Instances
    empty, so a C-GET SCU must walk down to the instances to learn what to
    accept.  `levels` records the Query/Retrieve Level of every C-FIND."""

    def __init__(self, paths, *, ae_title="PLAINQR"):
        self.port = free_port()
        self.ae_title = ae_title
        self.datasets = [dcmread(p) for p in paths]
        self.levels = []

    def start(self):
        ae = AE(ae_title=self.ae_title)
        for cx in StoragePresentationContexts:  # the requestor stores (SCP role, PS3.7 D.3.3.4)
            ae.add_supported_context(cx.abstract_syntax, scu_role=False, scp_role=True)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        return self._serve(ae, [(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)])

    def _matching(self, identifier):
        keys = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
        wanted = {k: identifier.get(k) for k in keys if identifier.get(k)}
        return [ds for ds in self.datasets if all(_matches(ds.get(k), v) for k, v in wanted.items())]

    def _find(self, event):
        identifier = event.identifier
        level = str(identifier.QueryRetrieveLevel)
        self.levels.append(level)
        keys = {"STUDY": 1, "SERIES": 2, "IMAGE": 3}[level]
        answered = set()
        for ds in self._matching(identifier):
            answer = Dataset()
            answer.QueryRetrieveLevel = level
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")[:keys]:
                setattr(answer, keyword, ds.get(keyword))
            if level == "IMAGE":
                answer.SOPClassUID = ds.SOPClassUID
            for keyword in identifier.dir():
                if keyword not in answer:
                    setattr(answer, keyword, "")  # asked for, not known here: empty
            unique = getattr(answer, ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")[keys - 1])
            if unique not in answered:
                answered.add(unique)
                yield 0xFF00, answer

    def _get(self, event):
        found = self._matching(event.identifier)
        yield len(found)
        for ds in found:
            yield 0xFF00, ds


def _matches(value, wanted):
    """Single value or UID list matching (PS3.4 C.2.2.2.2)."""
    if isinstance(wanted, str):
        wanted = wanted.split("\\")
    return str(value) in {str(w) for w in wanted}


class SilentPeer:
    """Accepts TCP connections and never answers (a hung PACS)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)

    def stop(self):
        self._stop = True
        self.sock.close()
        for conn in self.connections:
            conn.close()


def store_to_us(scp, folder: Path):
    """Send a folder of files to our runscp with DCMTK storescu."""
    result = scp.store(*sorted(folder.iterdir()))
    assert result.returncode == 0, result.stderr


def store_to_orthanc(orthanc, folder: Path):
    result = dcmtk("storescu", "-aec", orthanc.aet, "127.0.0.1", orthanc.dicom_port, "+sd", folder)
    assert result.returncode == 0, result.stderr


def dataset_bytes(data: bytes) -> bytes:
    """The bytes of a Part 10 file after its file meta group."""
    assert data[128:132] == b"DICM"
    # (0002,0000) UL File Meta Information Group Length, explicit VR LE.
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def stored_dataset(uid):
    """The dataset bytes of the instance the archive stored under `uid`."""
    from dicomnodes.archive.storage import instance_path

    return dataset_bytes(instance_path(uid).read_bytes())


class CapturingScp(RecordingScp):
    """A RecordingScp that also keeps what each C-STORE-RQ carried: the
    dataset bytes as received (`datasets`, by SOP Instance UID) and the
    request's (MessageID, MoveOriginatorApplicationEntityTitle,
    MoveOriginatorMessageID) in `requests`.  `max_pdu`: the maximum PDU
    length it states (0: unlimited); `transfer_syntaxes`: the only ones it
    accepts (pynetdicom's default prefers implicit VR)."""

    def __init__(self, *, max_pdu=16382, transfer_syntaxes=None, **kwargs):
        super().__init__(**kwargs)
        self.max_pdu = max_pdu
        self.transfer_syntaxes = transfer_syntaxes
        self.datasets = {}
        self.requests = []

    def start(self):
        super().start()
        self.server.ae.maximum_pdu_size = self.max_pdu  # read at each association
        if self.transfer_syntaxes:
            self.server.contexts = [
                build_context(cx.abstract_syntax, self.transfer_syntaxes) for cx in self.server.contexts
            ]
        return self

    def _store(self, event):
        request = event.request
        with self._lock:
            self.datasets[str(request.AffectedSOPInstanceUID)] = request.DataSet.getvalue()
            self.requests.append(
                (request.MessageID, request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID)
            )
        return super()._store(event)


def dataset_sha256(path: Path) -> str:
    """SHA-256 of a Part 10 file's bytes after its file meta group, read in
    1 MiB pieces (for files too big to hold, unlike `dataset_bytes`)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(144)
        assert head[128:132] == b"DICM"
        f.seek(144 + int.from_bytes(head[140:144], "little"))
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()
