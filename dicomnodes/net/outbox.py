"""Several small DIMSE messages handed to the socket in one sendmsg.

A C-FIND with many answers sends, per answer, a response command set and
an identifier of a few hundred bytes: two P-DATA-TF PDUs.  Sent one by one
that is two system calls per answer (and, with TCP_NODELAY, two segments);
an `Outbox` keeps the PDUs of up to `max_messages` messages (or
`max_bytes`) and sends them with one `Link.send`.  The bytes on the wire
are the same PDUs in the same order, each within the peer's maximum length.

With the debug log on, every message is sent at once, so that the log
still has one line per PDU and per DIMSE message.
"""

import logging

from dicomnodes.net.pdata import pdata_pdus

logger = logging.getLogger(__name__)

_MAX_BUFFERS = 512  # per sendmsg (Linux takes at most 1024, IOV_MAX)


class Outbox:
    """Messages queued on `assoc` (an association.Association) until `flush()`."""

    def __init__(self, assoc, *, max_messages=32, max_bytes=256 * 1024):
        self.assoc = assoc
        self.debug = assoc.link.debug
        self.max_messages = 1 if self.debug else max_messages
        self.max_bytes = max_bytes
        self._buffers = []
        self._messages = self._bytes = 0

    def add(self, context_id, command: bytes, data: bytes | None = None) -> bool:
        """Queue a message (a command set and the data set that follows it,
        if any); True when this sent the queue (it was full)."""
        if self.debug:
            logger.debug("DIMSE sent on context %d: %d bytes of command", context_id, len(command))
        max_pdu = self.assoc.peer_max_pdu
        for payload, is_command in ((command, True), (data, False)):
            if payload is None:
                continue
            for pdu in pdata_pdus(context_id, payload, is_command=is_command, max_pdu=max_pdu):
                self._buffers += pdu
                if len(self._buffers) >= _MAX_BUFFERS:  # a large data set: whole PDUs go now
                    self._send()
            self._bytes += len(payload)
        self._messages += 1
        if self._messages >= self.max_messages or self._bytes >= self.max_bytes:
            self.flush()
            return True
        return False

    def flush(self):
        """Send what is queued (one sendmsg, or one per PDU with the debug log on)."""
        self._messages = self._bytes = 0
        self._send()

    def _send(self):
        buffers, self._buffers = self._buffers, []
        if self.debug:  # Link.send logs one line per call: one call per PDU
            for i in range(0, len(buffers), 2):
                self.assoc.link.send(*buffers[i : i + 2])
        elif buffers:
            self.assoc.link.send(*buffers)
