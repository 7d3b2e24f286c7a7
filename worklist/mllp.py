"""The HL7 listener of `manage.py runmllp`: MLLP framing and an asyncio server.

MLLP (HL7 v2, Minimal Lower Layer Protocol) sends each message as
0x0B <message> 0x1C 0x0D.  `FrameBuffer` cuts a byte stream into messages
without any socket; `MllpServer` is the thin asyncio adapter around it: it
keeps the listener in line with the worklist server settings, hands every
complete frame to the message handler (`worklist.hl7in.process_message`) in
a worker thread, because that uses the Django ORM, and writes the ACK back
framed.  The management command only wires the two and runs them.
"""

import asyncio
import logging
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.db import connections

from pacs_site.listeners import SettingsFollower, listening_socket, peer_address
from worklist.models import WorklistSettings

logger = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
_MARKER = re.compile(b"[\x0b\x1c]")
_BLANK = b" \t\r\n"

# FrameBuffer states.
_HUNT = "hunt"  # outside a frame, waiting for 0x0B
_FRAME = "frame"  # inside a frame
_DISCARD = "discard"  # inside a frame that passed the size cap
_TRAILER = "trailer"  # just after 0x1C, where 0x0D is expected


class FrameBuffer:
    """Cuts an MLLP byte stream into frames (the bytes between 0x0B and 0x1C).

    1. A 0x0B always starts a new frame, whatever came before, so one valid
       frame is never lost to the garbage in front of it.
    2. Bytes outside a frame are skipped and counted (`skipped_bytes`).
    3. 0x1C ends the frame; the 0x0D after it is expected but not required.
    4. A 0x0B inside a frame means the frame was never ended: it is dropped
       and counted (`truncated_frames`), and the new frame begins.
    5. A frame that grows past `max_size` bytes is dropped at once and
       counted (`oversize_frames`); the rest of it, up to its 0x1C or the
       next 0x0B, is discarded (`oversize_bytes`).  The connection so
       resynchronises at the next frame and stays open.
    """

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.frames = 0
        self.skipped_bytes = 0
        self.truncated_frames = 0
        self.oversize_frames = 0
        self.oversize_bytes = 0
        self._state = _HUNT
        self._frame = bytearray()

    @property
    def in_frame(self) -> bool:
        """Whether a frame has begun (0x0B) and not ended."""
        return self._state in (_FRAME, _DISCARD)

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame begun but not ended (lost if the stream ends here)."""
        return len(self._frame)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by `data`, in order."""
        frames = []
        i, end = 0, len(data)
        while i < end:
            if self._state == _TRAILER:
                self._state = _HUNT
                if data[i] == CARRIAGE_RETURN[0]:
                    i += 1
                    continue
            if self._state == _HUNT:
                start = data.find(START_BLOCK, i)
                if start < 0:
                    self.skipped_bytes += end - i
                    break
                self.skipped_bytes += start - i
                self._state = _FRAME
                i = start + 1
                continue
            match = _MARKER.search(data, i)
            stop = match.start() if match else end
            if self._state == _FRAME:
                self._frame += data[i:stop]
                if len(self._frame) > self.max_size:
                    self.oversize_frames += 1
                    self.oversize_bytes += len(self._frame)
                    self._frame.clear()
                    self._state = _DISCARD
            else:
                self.oversize_bytes += stop - i
            if match is None:
                break
            if match.group() == END_BLOCK:
                if self._state == _FRAME:
                    frames.append(bytes(self._frame))
                    self.frames += 1
                self._state = _TRAILER
            else:  # 0x0B: a new frame
                if self._state == _FRAME:
                    self.truncated_frames += 1
                self._state = _FRAME
            self._frame.clear()
            i = stop + 1
        return frames


def frame(message: bytes) -> bytes:
    """One message in its MLLP envelope."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class MllpConfig:
    port: int
    max_message_size: int
    idle_timeout: int
    frame_timeout: int = 30
    max_connections: int = 32


def load_config(*, port=None) -> MllpConfig:
    """The stored settings, with the command-line port applied."""
    row = WorklistSettings.load()
    return MllpConfig(
        port=port if port is not None else row.hl7_port,
        max_message_size=row.max_message_size,
        idle_timeout=row.idle_timeout,
        frame_timeout=row.frame_timeout,
        max_connections=row.max_connections,
    )


def drop_broken_connections():
    """Close this thread's database connections that failed and are no
    longer usable, so that the next query reconnects.

    Django's close_old_connections() without the age rule: with CONN_MAX_AGE=0
    that would reconnect before every message, a third of a message's cost
    on SQLite (like dicomnodes.archive.index, which closes on error instead).
    """
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and conn.errors_occurred:
            if conn.is_usable():
                conn.errors_occurred = False
            else:
                conn.close()


class MllpServer:
    """One runmllp process: an asyncio MLLP listener kept in line with the
    settings.  `handle_message(raw, peer=..., address=...)` returns the ACK
    bytes or None and runs in a worker thread (`peer`: host:port for the
    log, `address`: the host alone).

    Limits: at most `max_connections` connections (one more is closed at
    once); a connection idle for `idle_timeout` is closed, and so is one
    whose message is not whole within `frame_timeout` of its first byte
    (the idle timer alone restarts on every byte, so a trickle would keep
    a connection forever)."""

    def __init__(self, handle_message, *, port=None, workers=4):
        self.handle_message = handle_message
        self.port_override = port
        self.config = None
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mllp")
        self._server = None
        self._socket = None  # bound by the follower, served by asyncio from the next await
        where = "--port 0" if port is not None else "port 0 in the worklist server settings"
        self.follower = SettingsFollower(
            start=self._listen, stop=self._stop_listening, idle=f"worklist server disabled ({where})", log=logger
        )
        self._connections = {}  # task -> True while a message is being handled
        self._closing = False
        self.connections = 0
        self.messages = 0
        self.acks = 0
        self.dropped_frames = 0
        self.skipped_bytes = 0
        self.refused_connections = 0
        self.timed_out_frames = 0

    async def serve(self, should_stop, *, poll=2.0):
        """Follow the settings every `poll` seconds until `should_stop()`."""
        while not should_stop():
            await self.step()
            deadline = time.monotonic() + poll
            while not should_stop() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
        await self.close()

    async def step(self) -> bool:
        """Apply the current settings; True if the listener changed."""
        loop = asyncio.get_running_loop()
        try:
            cfg = await loop.run_in_executor(self.executor, self._load_config)
        except Exception as exc:  # database briefly unavailable: keep what we have
            logger.warning("cannot read the worklist server settings (%s); keeping the current ones", exc)
            return False
        self.config = cfg
        changed = self.follower.follow(cfg.port)
        if self._socket is not None and self._server is None:
            self._server = await asyncio.start_server(self._on_connection, sock=self._socket)
        return changed

    def _listen(self, port):
        # Bound here, synchronously, so that the follower sees a bind error;
        # step() hands the socket to asyncio.  It listens already: a
        # connection waits in its backlog until then.
        self._socket = listening_socket(port)
        logger.info("HL7 (MLLP) server listening on port %d (all addresses)", port)

    def _load_config(self):
        drop_broken_connections()
        return load_config(port=self.port_override)

    def _stop_listening(self):
        # Stops accepting; open connections go on until they end or idle out.
        if self._server is not None:
            self._server.close()  # and its socket
        elif self._socket is not None:
            self._socket.close()
        self._server = self._socket = None

    async def close(self, timeout=10.0):
        """Stop listening; end idle connections now and busy ones once their
        ACK is written (up to `timeout`); then stop the worker threads."""
        self.follower.stop()
        self._closing = True
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=timeout)
        for task in list(self._connections):
            task.cancel()
        self.executor.shutdown(wait=True)

    def summary(self) -> str:
        return (
            f"{self.connections} connections, {self.messages} messages, {self.acks} ACKs, "
            f"{self.dropped_frames} frames dropped, {self.skipped_bytes} stray bytes skipped, "
            f"{self.refused_connections} connections refused (maximum), "
            f"{self.timed_out_frames} closed by the message time-out"
        )

    async def _on_connection(self, reader, writer):
        peername = writer.get_extra_info("peername")
        peer = peer_address(peername)
        if len(self._connections) >= self.config.max_connections:
            # Refused before anything is read: a flood of connections must not
            # hold a file descriptor (and a task) each.
            self.refused_connections += 1
            logger.warning(
                "HL7 connection from %s refused: %d connections open (maximum connections)",
                peer,
                len(self._connections),
            )
            writer.close()
            return
        task = asyncio.current_task()
        self._connections[task] = False
        self.connections += 1
        address = peer_address(str(peername[0])) if peername else ""
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        logger.info("HL7 connection from %s", peer)
        buffer = FrameBuffer(self.config.max_message_size)
        try:
            await self._converse(reader, writer, buffer, peer, address, task)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, TimeoutError) as exc:
            logger.info("HL7 connection from %s lost: %s", peer, exc)
        except Exception:
            logger.exception("HL7 connection from %s failed", peer)
        finally:
            del self._connections[task]
            if buffer.pending_bytes:
                self.dropped_frames += 1
                logger.warning(
                    "connection from %s ended in the middle of a frame (%d bytes dropped)", peer, buffer.pending_bytes
                )
            writer.close()
        logger.info("HL7 connection from %s closed (%d messages)", peer, buffer.frames)

    async def _converse(self, reader, writer, buffer, peer, address, task):
        """Read, cut frames, answer each in turn, until EOF, the idle
        time-out, or a message not whole by its deadline.

        The deadline starts with the first byte after the last whole
        message (stray bytes outside a frame too) and is lifted when a
        message completes.
        """
        deadline = None  # time.monotonic() by which the message begun must be whole
        while not self._closing:
            idle, frame_timeout = self.config.idle_timeout, self.config.frame_timeout
            wait = idle
            if deadline is not None:
                wait = min(idle, max(0.0, deadline - time.monotonic()))
            try:
                data = await asyncio.wait_for(reader.read(65536), wait)
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    self.timed_out_frames += 1
                    logger.warning(
                        "closing the HL7 connection from %s: a message was not whole %d s after its first byte "
                        "(message time-out)",
                        peer,
                        frame_timeout,
                    )
                else:
                    logger.info("closing the HL7 connection from %s: idle for %d s", peer, idle)
                return
            if not data:
                return
            received_at = time.monotonic()
            completed, skipped = buffer.frames, buffer.skipped_bytes
            buffer.max_size = self.config.max_message_size
            frames = self._cut(buffer, data, peer)
            if buffer.frames > completed:  # a message ended: a new deadline for what follows it, if anything
                deadline = received_at + frame_timeout if buffer.in_frame else None
            elif deadline is None and (buffer.in_frame or buffer.skipped_bytes > skipped):
                deadline = received_at + frame_timeout
            for raw in frames:
                if self._closing:
                    # Unanswered messages are sent again by the sender (no ACK).
                    return
                self._connections[task] = True
                try:
                    await self._answer(raw, writer, peer, address)
                finally:
                    self._connections[task] = False

    def _cut(self, buffer, data, peer):
        """buffer.feed(), with a log line for whatever it had to drop."""
        before = (buffer.skipped_bytes, buffer.oversize_frames, buffer.truncated_frames)
        frames = buffer.feed(data)
        skipped = buffer.skipped_bytes - before[0]
        oversize = buffer.oversize_frames - before[1]
        truncated = buffer.truncated_frames - before[2]
        if skipped:
            self.skipped_bytes += skipped
            logger.warning("%s: skipped %d bytes outside an MLLP frame (before 0x0B)", peer, skipped)
        if oversize:
            self.dropped_frames += oversize
            logger.warning(
                "%s: dropped %d frame(s) larger than %d bytes (maximum message size)", peer, oversize, buffer.max_size
            )
        if truncated:
            self.dropped_frames += truncated
            logger.warning("%s: dropped %d frame(s) with no end (0x1C) before the next 0x0B", peer, truncated)
        return frames

    async def _answer(self, raw, writer, peer, address):
        if not raw.strip(_BLANK):
            self.dropped_frames += 1
            logger.warning("%s: dropped an empty frame", peer)
            return
        self.messages += 1
        loop = asyncio.get_running_loop()
        try:
            ack = await loop.run_in_executor(self.executor, self._handle, raw, peer, address)
        except Exception:  # the handler promises not to raise; the listener must not die if it does
            logger.exception("%s: the HL7 message handler failed on a %d-byte message", peer, len(raw))
            return
        if ack:
            writer.write(frame(ack))
            await asyncio.wait_for(writer.drain(), self.config.idle_timeout)
            self.acks += 1

    def _handle(self, raw, peer, address):
        drop_broken_connections()
        return self.handle_message(raw, peer=peer, address=address)
