"""The web process: daphne, with an access log that leaves out query strings.

`python -m portal.daphne_server [daphne options] pacs_site.asgi:application`
takes daphne's own options.  Patient links carry their token in the query
string (`/token?<token>`), and daphne's access log prints whole URIs: ours
prints the path only, so tokens never reach a log file.  And a streamed
response (the study ZIP) is sent no faster than the client reads it.

`endpoint()` builds daphne's (twisted's) endpoint string for a port, plain
or TLS; `manage.py runpacs` passes it with `-e`.
"""

import asyncio
import functools
import os

from daphne.cli import CommandLineInterface
from daphne.server import Server
from django.urls import get_resolver
from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from zope.interface import implementer

from portal.logredact import MARK, hide_tokens
from portal.streaming import ZERO_COPY


def _escape(value: str) -> str:
    """Twisted endpoint strings separate fields with ':' and keys with '='."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpoint(port: int, *, certificate: str = "", key: str = "", interface: str = "::") -> str:
    """tcp:... or, with a certificate and key, ssl:... listening on every
    IPv4 and IPv6 address (dual-stack "::")."""
    where = f"port={port}:interface={_escape(interface)}"
    if certificate and key:
        return f"ssl:{where}:privateKey={_escape(key)}:certKey={_escape(certificate)}"
    return f"tcp:{where}"


def strip_query(details: dict) -> dict:
    """The access-log details with the path cut before '?', and a patient
    link's token in a DICOMweb path replaced by '…'."""
    path = details.get("path")
    if isinstance(path, str) and ("?" in path or MARK in path):
        return {**details, "path": hide_tokens(path.split("?", 1)[0])}
    return details


@implementer(IPushProducer)
class _SendGate:
    """A push producer that is only a flag.  Twisted pauses it when the
    connection's send buffer is full and resumes it once drained."""

    def __init__(self):
        self.open = asyncio.Event()
        self.open.set()

    def pauseProducing(self):
        self.open.clear()

    def resumeProducing(self):
        self.open.set()

    def stopProducing(self):  # the connection is gone: let the sender go on (and stop)
        self.open.set()


_BODY = object()  # in a BodyQueue: "the request body comes next", read from the file


class BodyQueue(asyncio.Queue):
    """An application's input queue holding the request body as its place in
    Twisted's content file, not as bytes.

    Twisted receives a body into that file (memory below 100 KB); daphne
    then reads all of it and puts it in the queue at once as 8 KiB messages,
    so a 300 MB STOW-RS body sat in the web process's memory (+313 MB
    measured, tests/portal/test_dicomweb_stow.py).  Here the body's
    messages are dropped as daphne puts them and made again from the file,
    a chunk at a time, as the application asks for them."""

    CHUNK = 2**20

    def __init__(self, content):
        super().__init__()
        self._content = content
        self._length = 0  # body bytes daphne has put
        self._complete = False
        self._delivered = 0
        self._reading = False  # the body's turn has come in get()

    def put_nowait(self, item):
        if item.get("type") != "http.request":
            return super().put_nowait(item)
        if not self._length and not self._complete:
            super().put_nowait(_BODY)
        self._length += len(item.get("body", b""))
        self._complete = not item.get("more_body", False)
        return None

    async def get(self):
        if self._reading:
            return self._next_chunk()
        item = await super().get()
        if item is _BODY:
            self._reading = True
            return self._next_chunk()
        return item

    def _next_chunk(self):
        try:
            self._content.seek(self._delivered)
            chunk = self._content.read(min(self.CHUNK, self._length - self._delivered))
        except ValueError:  # the content file was closed: the client has gone
            self._reading = False
            return {"type": "http.disconnect"}
        self._delivered += len(chunk)
        more = self._delivered < self._length or not self._complete
        if not more or not chunk:
            self._reading = False
        return {"type": "http.request", "body": chunk, "more_body": more and bool(chunk)}


class _ZeroCopy:
    """Sends a file's bytes with os.sendfile on an HTTP response's socket,
    past Twisted's buffer (the ASGI `http.response.zerocopysend` extension,
    which `create_application` offers on plain TCP connections).

    Twisted's buffer is drained first (what went before, headers included,
    is on the wire in order), then the file goes out as the socket takes it;
    a client that stops reading is waited for, as long as it stays
    connected."""

    WAIT = 5.0  # s between checks that a client that reads nothing is still there

    def __init__(self, protocol, transport, gate):
        self.protocol, self.transport, self.gate = protocol, transport, gate

    def _gone(self):
        return self.protocol.finished or self.protocol._disconnected or self.protocol.channel is None

    def _pending(self):
        t = self.transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    async def drain(self):
        """Until Twisted has sent all it holds.  Its transport resumes its
        producer (the channel, then our gate) when the buffer is empty, if
        it was paused: mark it so."""
        while self._pending() and not self._gone():
            self.gate.open.clear()
            self.transport.producerPaused = True
            try:
                await asyncio.wait_for(self.gate.open.wait(), self.WAIT)
            except TimeoutError:
                pass

    async def _writable(self, fd):
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await asyncio.wait_for(ready, self.WAIT)
        except TimeoutError:
            pass
        finally:
            loop.remove_writer(fd)

    async def send(self, f, offset, count):
        await self.drain()
        fd = self.transport.fileno()
        while count > 0 and not self._gone():
            try:
                sent = os.sendfile(fd, f.fileno(), offset, count)
            except BlockingIOError:
                await self._writable(fd)
                continue
            except OSError:  # the client has gone: Twisted notices it too
                self.transport.abortConnection()
                return
            if not sent:  # the file is shorter than said: the answer cannot be completed
                self.transport.abortConnection()
                return
            offset += sent
            count -= sent
            self.protocol.sentLength += sent
            self.protocol.channel.resetTimeout()


class QuietServer(Server):
    """daphne's server, with the changes the module docstring and the
    methods below name, and two for the first and every request body:

    - the URL configuration, and with it every view module (DRF, psycopg's
      types, pydicom's readers), is imported before the first request
      rather than by it: a web process's first request took 0.4-0.8 s more
      than the next (py-spy: 55% of that request's samples in the URLconf's
      imports), the first STOW-RS of bench/dicomweb.py included;
    - daphne reads a received body from Twisted's file to hand it on in
      `request_buffer_size` pieces, 8 KiB by default: 3,200 reads for a
      25 MB STOW-RS body, which BodyQueue drops anyway (it reads the file
      itself).  1 MiB pieces: 25 reads.
    """

    BODY_PIECE = 2**20

    def __init__(self, application, *args, **kwargs):
        super().__init__(application, *args, **kwargs)
        self.request_buffer_size = max(self.request_buffer_size, self.BODY_PIECE)

    def run(self):
        get_resolver().url_patterns  # noqa: B018 (imports the URLconf's modules)
        super().run()

    def log_action(self, protocol, action, details):
        super().log_action(protocol, action, strip_query(details))

    def create_application(self, protocol, scope):
        """daphne's, with a BodyQueue for HTTP requests."""
        assert "application_instance" not in self.connections[protocol]
        content = getattr(protocol, "content", None)
        input_queue = BodyQueue(content) if scope.get("type") == "http" and content is not None else asyncio.Queue()
        scope.setdefault("asgi", {"version": "3.0"})
        if scope.get("type") == "http" and scope.get("scheme") == "http" and _plain_tcp(protocol):
            scope.setdefault("extensions", {})[ZERO_COPY] = {}
        application_instance = self.application(
            scope=scope, receive=input_queue.get, send=functools.partial(self.handle_reply, protocol)
        )
        if protocol not in self.connections:
            return None
        self.connections[protocol]["application_instance"] = asyncio.ensure_future(application_instance)
        return input_queue

    async def handle_reply(self, protocol, message):
        """daphne hands every body chunk to Twisted at once, which buffers what
        the client has not read yet: a slow client downloading a study would
        have it all in memory.  Here a streamed response waits, after each
        chunk, until the connection can take more (backpressure)."""
        if message.get("type") == ZERO_COPY:
            await self._zero_copy(protocol, message)
            return
        body = message.get("type") == "http.response.body"
        more = body and message.get("more_body", False)
        gate = getattr(protocol, "_pacs_send_gate", None)
        if body and not more and gate is not None:
            # Unregister before the last chunk finishes the request (Twisted
            # complains, naming the URI, about a producer left registered).
            protocol._pacs_send_gate = None
            if getattr(protocol, "channel", None) is not None:
                protocol.unregisterProducer()
        await super().handle_reply(protocol, message)
        if not more or getattr(protocol, "_disconnected", True) or getattr(protocol, "channel", None) is None:
            return
        if gate is None:
            gate = protocol._pacs_send_gate = _SendGate()
            protocol.registerProducer(gate, True)
        await gate.open.wait()

    async def _zero_copy(self, protocol, message):
        gone = protocol not in self.connections or self.connections[protocol].get("disconnected")
        if gone or protocol.finished or protocol.channel is None or protocol.method == b"HEAD":
            return
        if not protocol.startedWriting:
            raise ValueError(f"{ZERO_COPY} before the response's first body message")
        gate = getattr(protocol, "_pacs_send_gate", None)
        if gate is None:
            gate = protocol._pacs_send_gate = _SendGate()
            protocol.registerProducer(gate, True)
        await _ZeroCopy(protocol, protocol.channel.transport, gate).send(
            message["file"], message.get("offset", 0), message["count"]
        )


def _plain_tcp(protocol):
    """Whether the request came on a TCP socket we may write to ourselves
    (not TLS, whose bytes Twisted encrypts)."""
    transport = getattr(getattr(protocol, "channel", None), "transport", None)
    return isinstance(transport, tcp.Connection) and not ISSLTransport.providedBy(transport)


class WebCommandLine(CommandLineInterface):
    server_class = QuietServer


if __name__ == "__main__":
    # Requests' database work runs in one thread here (pacs_site/asgi.py):
    # its connection is kept between requests (pacs_site/settings.py).
    os.environ.setdefault("PACS_DB_CONN_MAX_AGE", "60")
    # Audit events of requests are written by a thread in batches (pacs_site/audit.py Spool).
    os.environ.setdefault("PACS_AUDIT_SPOOL", "1")
    # WADO-RS metadata cache entries too, after the answer (portal/dicomweb/metacache.py).
    os.environ.setdefault("PACS_METADATA_CACHE_THREAD", "1")
    # Twisted sends at most 128 KiB per write-ready event: a 300 MB WADO-RS
    # series took 2,400 turns of the event loop.  With 8 MiB the kernel's
    # send buffer, not the loop, sets the pace (/tmp WADO series loop, same load: 370 -> 650 MB/s).
    FileDescriptor.SEND_LIMIT = 8 * 2**20
    WebCommandLine.entrypoint()
