"""What every association we open gets (pynetdicom leaves both to us).

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
   (`retrieve.StoredFile`), not read and re-encoded by pydicom; and
   pynetdicom's standard PDU/DIMSE log handlers, which format every message
   even when nobody reads it, stay unbound (runscp binds them in debug mode).
"""

import socket
import threading

from pynetdicom import _config, evt

_config.STORE_SEND_CHUNKED_DATASET = True
_config.LOG_HANDLER_LEVEL = "none"


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
