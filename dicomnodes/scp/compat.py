"""Every pynetdicom patch and `_config` setting of the project, in one place.

`PATCHED` names each pynetdicom attribute we set or wrap; a test checks that
each still exists in the pinned pynetdicom (an upgrade that renames one
fails there, not in production).

What every association we open gets (pynetdicom leaves both to us):

1. TCP_NODELAY: with Nagle's algorithm on, every C-STORE of a C-MOVE waits
   ~40 ms for the peer's delayed ACK (measured: 31 → several hundred
   instances/s for 512×512 CT).
2. Responses stay with the call that waits for them.  pynetdicom's
   association thread polls the DIMSE queue too, and its pause handshake
   with `send_c_store()`/`send_c_find()`/… has a window in which it takes a
   fast peer's response off the queue, logs "Received unexpected C-STORE
   service message" and leaves the caller waiting for the whole DIMSE
   time-out (pynetdicom issue #875; seen in bench/transfer.py: 2 sends of
   2000 small instances in 8 stalled for 30 s).  On associations we
   request, every response and every C-STORE of a C-GET is read by our
   own call, so that thread need not read the queue at all.
3. Stored files go out from disk as they are, in chunks
   (`sending.StoredFile`, `send_files_raw`), not read and re-encoded by
   pydicom; and pynetdicom's standard PDU/DIMSE log handlers, which format
   every message even when nobody reads it, stay unbound (runscp binds them
   in debug mode).

4. A PDU is read within the network time-out and up to a length
   (`bounded_recv`).  pynetdicom reads a PDU's length, then loops on
   recv() until that many bytes came, with no time-out on an accepted
   socket and no bound on the length: one byte of a PDU header held a
   connection and three threads forever, a trickle of a byte a minute
   held it as long, and a stated length of 4 GB grew a buffer to match.

5. A C-STORE dataset above `spool.SPILL_AT` goes on arriving into a file
   (`spill_large_datasets`), not into pynetdicom's BytesIO: runscp's memory
   does not grow with the size of what it receives.  (pynetdicom's own
   STORE_RECV_CHUNKED_DATASET puts every dataset, small ones too, in a file
   of the system's temporary folder with a file meta of its own, which we
   would then copy: slower for the common small instance.)

6. A C-CANCEL is read while we answer (`let_dul_read`).  pynetdicom's DUL
   thread reads the socket only when it has nothing queued to send; a
   C-FIND handler that yields answers faster than they go out keeps it
   sending, and a peer's C-CANCEL waited until the last answer (3,000
   answers: findscu --cancel 1 got all of them about one time in six).

What runscp adds (`configure_scp()`): every storage-like SOP class accepted,
no identifier pretty-printing; and a refusal's status and comment put into
the response pynetdicom sends for a C-MOVE/C-GET (`answer_next_response`).
"""

import io
import socket
import threading
import time

from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.transport import AssociationSocket

from dicomnodes.archive.spool import SPILL_AT, SpoolFile

# (object, attribute) of every pynetdicom attribute set or wrapped below.
PATCHED = [
    (_config, "STORE_SEND_CHUNKED_DATASET"),
    (_config, "LOG_HANDLER_LEVEL"),
    (_config, "UNRESTRICTED_STORAGE_SERVICE"),
    (_config, "LOG_REQUEST_IDENTIFIERS"),
    (_config, "LOG_RESPONSE_IDENTIFIERS"),
    (DIMSEServiceProvider, "get_msg"),  # leave_responses_to_callers
    (DIMSEServiceProvider, "send_msg"),  # answer_next_response
    (Association, "send_c_store"),  # send_files_raw
    (AssociationSocket, "recv"),  # bounded_recv
    (DIMSEMessage, "decode_msg"),  # spill_large_datasets
]
# Attributes of pynetdicom objects (set in __init__) that the code above and
# runscp use: class name -> attribute names.
USED_ON_INSTANCES = {
    "AE": ["_servers"],  # ScpService registers its server so AE.shutdown() stops it
    "Association": [
        "dimse",
        "dul",
        "acse",
        "requestor",
        "acceptor",
        "network_timeout",
        "is_acceptor",
        "is_established",
    ],
    "DULServiceProvider": ["event_queue", "socket"],
    "AssociationSocket": ["socket", "assoc"],
    "ServiceUser": ["maximum_length"],
    "C_STORE_RQ": ["data_set"],
    "DIMSEServiceProvider": ["msg_queue"],  # JobRun.cancel wakes a DIMSE wait
}

# Stored files are sent from disk in chunks (C-MOVE, C-GET, transfer jobs).
_config.STORE_SEND_CHUNKED_DATASET = True
# pynetdicom's standard PDU/DIMSE log handlers format every message even
# when nobody reads it; runscp binds them only in debug mode.
_config.LOG_HANDLER_LEVEL = "none"


# The longest PDU variable field read when our advertised maximum is 0
# ("unlimited"); else twice what we advertise (some peers count a header
# or two more than PS3.8 says), and never less than 1 MiB (an
# A-ASSOCIATE-RQ with many contexts and a SAML assertion).
UNLIMITED_PDU_BOUND = 64 * 2**20
_PDU_FLOOR = 2**20
_RECV_CHUNK = 2**20


def _pdu_bound(assoc) -> int:
    ours = assoc.acceptor if assoc.is_acceptor else assoc.requestor
    advertised = ours.maximum_length or 0
    return max(2 * advertised, _PDU_FLOOR) if advertised else UNLIMITED_PDU_BOUND


def bounded_recv(self, nr_bytes):
    """AssociationSocket.recv: `nr_bytes` within the association's network
    time-out in all (not per recv() call), and no more than `_pdu_bound`.
    Like pynetdicom's, it returns what it has when the peer closes; a
    time-out or an over-long PDU raises OSError, which pynetdicom's DUL
    turns into "transport connection closed" (Evt17)."""
    assoc = self.assoc
    if nr_bytes > 6 and nr_bytes > _pdu_bound(assoc):
        raise OSError(f"a PDU of {nr_bytes} bytes is longer than the {_pdu_bound(assoc)} accepted here")
    sock = self.socket
    timeout = assoc.network_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = bytearray(nr_bytes)
    view = memoryview(buf)
    got = 0
    try:
        while got < nr_bytes:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{got} of {nr_bytes} bytes of a PDU in {timeout} s")
                sock.settimeout(remaining)
            n = sock.recv_into(view[got:], min(nr_bytes - got, _RECV_CHUNK))
            if not n:
                break
            got += n
    finally:
        view.release()
        if deadline is not None:
            try:
                sock.settimeout(timeout)  # a later send() gets the whole time-out
            except OSError:
                pass
    if got < nr_bytes:
        del buf[got:]
    return buf


AssociationSocket.recv = bounded_recv


def let_dul_read(assoc, *, timeout=1.0):
    """While bytes from the peer wait on the socket, or a PDU read from it
    waits for the state machine, pause (at most `timeout`) so that the DUL
    thread sends what is queued and then reads them.  One select() when
    nothing waits."""
    dul = assoc.dul
    deadline = None
    while assoc.is_established and (dul.event_queue.qsize() or (dul.socket is not None and dul.socket.ready)):
        now = time.monotonic()
        deadline = deadline or now + timeout
        if now >= deadline:
            return
        time.sleep(0.001)


_decode_msg = DIMSEMessage.decode_msg


def spill_large_datasets(self, primitive, assoc=None):
    """DIMSEMessage.decode_msg, which moves a C-STORE dataset into a
    SpoolFile once it is larger than SPILL_AT (pynetdicom writes every
    later fragment with `self.data_set.write()`, and hands `data_set` to
    the C-STORE handler as the request's DataSet)."""
    done = _decode_msg(self, primitive, assoc)
    data_set = self.data_set
    if (
        isinstance(self, C_STORE_RQ)
        and isinstance(data_set, io.BytesIO)
        and not isinstance(data_set, SpoolFile)
        and data_set.tell() > SPILL_AT
    ):
        with data_set.getbuffer() as head:
            self.data_set = SpoolFile(head)
        data_set.close()
    return done


# Every process: runscp, and the transfer workers that receive C-GET's C-STOREs.
DIMSEMessage.decode_msg = spill_large_datasets


def configure_scp():
    """The settings of the runscp process."""
    # Accept any storage-like SOP class (private ones included) in the first
    # transfer syntax the sender proposes: we store bytes as received, so there is
    # no reason to refuse a modality's private or brand-new SOP class.
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    # Nor do we pretty-print every C-FIND/C-MOVE identifier (8 % of a big C-FIND).
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def _set_nodelay(event):
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # closed already, or not TCP


def leave_responses_to_callers(assoc):
    """Stop `assoc`'s own thread from taking DIMSE messages (see above)."""
    dimse = assoc.dimse
    if getattr(dimse, "_pacs_responses_to_callers", False):
        return
    original = dimse.get_msg

    def get_msg(block=False):
        if not block and threading.current_thread() is assoc:
            return None, None
        return original(block)

    dimse.get_msg = get_msg
    dimse._pacs_responses_to_callers = True


def _on_established(event):
    leave_responses_to_callers(event.assoc)


# Pass in `evt_handlers` of AE.associate() (and of C-MOVE sub-associations):
# TCP_NODELAY as soon as we connect, responses kept for their callers as
# soon as the association is up.
NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, _set_nodelay), (evt.EVT_ESTABLISHED, _on_established)]


def send_files_raw(assoc):
    """Let `assoc.send_c_store` send StoredFile datasets from their files
    (once per association: several C-GETs may run on one)."""
    if getattr(assoc, "_sends_files_raw", False):
        return
    assoc._sends_files_raw = True
    original = assoc.send_c_store

    def send_c_store(dataset, *args, **kwargs):
        stored_path = getattr(dataset, "_stored_path", None)  # a sending.StoredFile
        if stored_path is not None:
            return original(stored_path, *args, **kwargs)
        return original(dataset, *args, **kwargs)

    assoc.send_c_store = send_c_store


def answer_next_response(assoc, code, comment):
    """Give the next DIMSE response pynetdicom sends on this association our
    status and Error Comment (its own answer to "no destination" is a bare
    A801)."""
    dimse = assoc.dimse
    original = dimse.send_msg

    def send_msg(primitive, context_id):
        dimse.send_msg = original
        primitive.Status = code
        primitive.ErrorComment = comment.replace("\\", "/")[:64]
        return original(primitive, context_id)

    dimse.send_msg = send_msg
