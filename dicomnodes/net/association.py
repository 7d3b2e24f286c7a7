"""The association runtime: one connected socket, read by one thread.

`Link` reads PDUs from the socket into one reusable buffer (`recv_into`,
as many bytes as the kernel has, parsed in place) and writes PDUs with
`sendmsg` (headers and payloads without joining them; a stored file's
dataset as slices of its mapping).  Over TLS (an `ssl.SSLSocket`, which has
no sendmsg) the buffers are joined into one write.  Every wait is bounded: the
next PDU must start within the idle time-out and arrive whole within the
network time-out; a PDU stated longer than our bound ends the association
before anything is allocated for it.

`Association` is the data phase on a Link: DIMSE messages reassembled by
`pdata.MessageAssembler` (data fragments go to the sink the owner opens for
them — a C-STORE's to its spool, never a whole-dataset copy), messages sent
in PDVs of the peer's maximum length, A-RELEASE and A-ABORT.

Why a thread per association and no event loop: the services are
blocking code (the index writer's commit, SQL for C-FIND, files for
C-MOVE) and one reader per association needs no hand-off of any PDU
between threads — pynetdicom's two threads per association polling queues
with 1 ms sleeps were the cost this replaces (issue 14).
"""

import logging
import mmap
import select
import socket
import ssl
import threading
import time
from collections import deque

from dicomnodes.net import UNEXPECTED_PDU, ProtocolError
from dicomnodes.net.pdata import (
    A_ABORT,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    P_DATA_TF,
    PDU_HEADER_LENGTH,
    RELEASE_RP,
    RELEASE_RQ,
    MessageAssembler,
    abort_pdu,
    check_release,
    decode_abort,
    fragments,
    parse_pdu_header,
    pdata_header,
)

logger = logging.getLogger(__name__)

_READ_AHEAD = 256 * 1024  # bytes asked of the kernel at a time
_SEND_BATCH = 4 * 2**20  # file bytes handed to one sendmsg at most
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}


class PeerGone(Exception):
    """The connection ended (closed, reset, or silent past a time-out)."""


class TimedOut(PeerGone):
    """Nothing came within the time-out."""


class PeerAborted(Exception):
    """The peer sent an A-ABORT."""

    def __init__(self, source, reason):
        super().__init__(f"A-ABORT from the peer (source {source}, reason {reason})")
        self.source, self.reason = source, reason


class Link:
    """PDUs over a connected socket.

    `max_read` bounds the PDUs we take (twice our advertised maximum, as
    DCMTK peers overshoot it by their headers); `timeout` is the network
    time-out: a PDU once begun must arrive whole within it."""

    def __init__(self, sock, *, timeout, max_read, debug=False):
        self.sock = sock
        self.timeout = timeout
        self.max_read = max_read
        self.debug = debug
        self._buffer = bytearray(_READ_AHEAD)
        self._view = memoryview(self._buffer)
        self._start = self._end = 0  # unread bytes: _buffer[_start:_end]
        # Sends come from the association's thread, and an A-ABORT may come
        # from another (a cancelled transfer job): one PDU at a time.
        self._sending = threading.Lock()
        self.tls = isinstance(sock, ssl.SSLSocket)

    # --- reading -------------------------------------------------------------------

    def read_pdu(self, *, idle=None):
        """(PDU type, body) of the next PDU; the body is a view of the
        buffer, valid until the next call.  `idle`: how long the PDU may take
        to begin (default: the network time-out)."""
        self._fill(PDU_HEADER_LENGTH, self.timeout if idle is None else idle)
        pdu_type, length = parse_pdu_header(
            self._buffer[self._start : self._start + PDU_HEADER_LENGTH], max_length=self.max_read
        )
        self._start += PDU_HEADER_LENGTH
        self._fill(length, self.timeout)
        body = self._view[self._start : self._start + length]
        self._start += length
        if self.debug:
            logger.debug("received %s PDU, %d bytes", PDU_NAMES[pdu_type], length)
        return pdu_type, body

    def readable(self) -> bool:
        """Are bytes waiting (in the buffer or the socket)?  Never blocks."""
        if self._end > self._start:
            return True
        if self.tls:
            if self.sock.pending():
                return True
            try:
                return bool(select.select([self.sock], [], [], 0)[0])
            except (OSError, ValueError):
                return True
        try:
            self.sock.settimeout(0)
            self.sock.recv(1, socket.MSG_PEEK)
            return True  # bytes, or the end of the stream: the read that follows says which
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # the read that follows says what happened

    def _fill(self, wanted, timeout):
        """Make `wanted` unread bytes available from _start, within `timeout`
        seconds."""
        if self._end - self._start >= wanted:
            return
        deadline = time.monotonic() + timeout
        if self._start + wanted > len(self._buffer):
            size = max(len(self._buffer), wanted + _READ_AHEAD if wanted > len(self._buffer) else 0)
            if size > len(self._buffer):
                # A PDU larger than the buffer (bounded by max_read): a new
                # buffer; views of the old one stay valid for their holders.
                fresh = bytearray(size)
                fresh[: self._end - self._start] = self._view[self._start : self._end]
                self._buffer, self._view = fresh, memoryview(fresh)
            else:
                pending = self._end - self._start
                # Views of earlier PDUs are dead by contract (valid until the next read).
                self._buffer[:pending] = self._buffer[self._start : self._end]
            self._end -= self._start
            self._start = 0
        while self._end - self._start < wanted:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimedOut(f"nothing for {self.timeout} s (network time-out)")
            try:
                self.sock.settimeout(left)
                got = self.sock.recv_into(self._view[self._end :])
            except TimeoutError:
                raise TimedOut(f"nothing for {self.timeout} s (network time-out)") from None
            except OSError as exc:
                raise PeerGone(f"connection error: {exc}") from None
            if not got:
                raise PeerGone("connection closed by the peer")
            self._end += got

    # --- writing -------------------------------------------------------------------

    def send(self, *buffers):
        """Send the buffers as one stream (sendmsg: no join)."""
        pending = [memoryview(b).cast("B") for b in buffers if len(b)]
        if self.debug and pending:
            size = sum(map(len, pending))
            logger.debug("sent %s PDU, %d bytes", PDU_NAMES.get(pending[0][0], "unknown"), size - 6)
        with self._sending:
            try:
                self.sock.settimeout(self.timeout)
                if self.tls:  # SSLSocket has no sendmsg: one record stream
                    self.sock.sendall(b"".join(pending))
                    pending = []
                while pending:
                    sent = self.sock.sendmsg(pending)
                    while sent:
                        if sent >= len(pending[0]):
                            sent -= len(pending[0])
                            pending.pop(0)
                        else:
                            pending[0] = pending[0][sent:]
                            sent = 0
            except OSError as exc:
                raise PeerGone(f"cannot send: {exc}") from None

    def shutdown(self):
        """End the connection from any thread: a read or send under way in
        the association's thread fails at once (PeerGone)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


RELEASE = object()  # what next_message() returns for an A-RELEASE-RQ between messages


class Association:
    """The data phase of one association on a Link.

    `contexts`: the accepted presentation contexts by id (negotiation.Context);
    `peer_max_pdu`: the peer's maximum length (0: none); `open_sink(assoc,
    context_id, command)` returns the callable that takes a message's data
    fragments (see pdata.MessageAssembler)."""

    def __init__(self, link, *, contexts, peer_max_pdu, open_sink):
        self.link = link
        self.contexts = contexts
        self.peer_max_pdu = peer_max_pdu
        self.assembler = MessageAssembler(lambda cid, command: open_sink(self, cid, command))
        self._ready = deque()  # messages complete but not yet taken
        self.released = self.aborted = False

    # --- receiving -----------------------------------------------------------------

    def next_message(self, *, idle=None):
        """The next complete message, or RELEASE.  Raises PeerAborted,
        PeerGone, ProtocolError (the caller aborts)."""
        while not self._ready:
            pdu_type, body = self.link.read_pdu(idle=idle)
            if pdu_type == P_DATA_TF:
                self._ready.extend(self.assembler.feed_pdu(body))
            elif pdu_type == A_RELEASE_RQ:
                check_release(body)
                if self.assembler.in_message():
                    raise ProtocolError("A-RELEASE-RQ in the middle of a message", abort_reason=UNEXPECTED_PDU)
                return RELEASE
            elif pdu_type == A_ABORT:
                self.aborted = True
                raise PeerAborted(*decode_abort(body))
            else:
                raise ProtocolError(
                    f"unexpected PDU type 0x{pdu_type:02X} in the data phase", abort_reason=UNEXPECTED_PDU
                )
        message = self._ready.popleft()
        if self.link.debug:
            logger.debug("DIMSE received on context %d: %s", message.context_id, dict(message.command))
        return message

    def message_waiting(self) -> bool:
        """Has the peer sent anything (a C-CANCEL, an A-ABORT) not yet read?"""
        return bool(self._ready) or self.link.readable()

    # --- sending -------------------------------------------------------------------

    def send_command(self, context_id, command: bytes):
        """A command set alone (responses, C-CANCEL): usually one PDU."""
        if self.link.debug:
            logger.debug("DIMSE sent on context %d: %d bytes of command", context_id, len(command))
        view = memoryview(command)
        for offset, length, last in fragments(len(command), self.peer_max_pdu):
            self.link.send(
                pdata_header(context_id, length, is_command=True, is_last=last), view[offset : offset + length]
            )

    def send_data(self, context_id, data):
        """A data set held in memory (bytes-like), in PDVs of the peer's length."""
        view = memoryview(data).cast("B")
        if not len(view):
            self.link.send(pdata_header(context_id, 0, is_command=False, is_last=True))
            return
        for offset, length, last in fragments(len(view), self.peer_max_pdu):
            self.link.send(
                pdata_header(context_id, length, is_command=False, is_last=last), view[offset : offset + length]
            )

    def send_data_file(self, context_id, file, offset, count):
        """A data set straight from `file` (its bytes from `offset`): the file
        mapped, and its PDVs — headers and slices of the mapping, no copy
        through Python — handed to sendmsg up to `_SEND_BATCH` bytes at a
        time.  (A sendfile per PDV took two system calls for each of the 32
        PDVs of a 512 KB CT at DCMTK's 16 KB maximum.)"""
        if not count:
            self.link.send(pdata_header(context_id, 0, is_command=False, is_last=True))
            return
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            if offset + count > len(mapped):
                raise PeerGone(f"the file is shorter than {offset + count} bytes")
            view = memoryview(mapped)
            batch, size = [], 0
            for start, length, last in fragments(count, self.peer_max_pdu):
                header = pdata_header(context_id, length, is_command=False, is_last=last)
                batch += [header, view[offset + start : offset + start + length]]
                size += length
                if size >= _SEND_BATCH or len(batch) >= 512:
                    self.link.send(*batch)
                    batch, size = [], 0
            if batch:
                self.link.send(*batch)
            del batch, view
        finally:
            try:
                mapped.close()
            except BufferError:  # views still held by an exception's frames: unmapped when they go
                pass

    # --- ending ----------------------------------------------------------------------

    def release_reply(self):
        self.link.send(RELEASE_RP)
        self.released = True

    def release(self, *, idle=None):
        """As requestor: A-RELEASE-RQ, then wait for the RP (PS3.8 7.2)."""
        self.link.send(RELEASE_RQ)
        while True:
            pdu_type, body = self.link.read_pdu(idle=idle)
            if pdu_type == A_RELEASE_RP:
                self.released = True
                return
            if pdu_type == A_ABORT:
                self.aborted = True
                raise PeerAborted(*decode_abort(body))
            if pdu_type == A_RELEASE_RQ:  # release collision (PS3.8 7.2.2): answer it
                self.link.send(RELEASE_RP)
                self.released = True
                return
            # P-DATA after our release request: a late response; dropped.

    def abort(self, reason=0):
        """Send an A-ABORT (source: service provider) and close; never raises."""
        self.aborted = True
        try:
            self.link.send(abort_pdu(reason=reason))
        except PeerGone:
            pass
