"""ASGI entry point: `daphne pacs_site.asgi:application`.

HTTP goes to Django; websockets (the live dashboard) to channels, with the
session's user (AuthMiddlewareStack) and only from pages of our own hosts
(AllowedHostsOriginValidator checks the Origin against ALLOWED_HOSTS).
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs_site.settings")

import django  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402


class Handler(ASGIHandler):
    """Django's ASGI handler, with the middleware and the view of a request
    run in one hop to the sync thread, and a streamed answer's pieces sent
    whole.

    Our middleware and views are sync.  Under Django's async chain every
    `MiddlewareMixin` runs its request and response halves through
    `sync_to_async`, and a sync-only middleware turns the chain back with
    `async_to_sync`: about fourteen thread hops per request, most of a
    QIDO-RS answer's time (py-spy; bench/dicomweb.py: 19 ms against
    Orthanc's 12-15 for a one-key study search).  Built as a sync chain it
    is one hop, as Django itself runs a WSGI request.

    Django cuts every piece of a streaming answer into 64 KiB ASGI messages
    (`chunk_bytes`), each a copy and a hop through daphne: a WADO-RS series,
    streamed in pieces of about 4 MiB (portal/dicomweb/media.py), went out
    at 290 MB/s, against 400 with pieces sent whole (bench/dicomweb.py).
    Pieces up to `WHOLE` go as they are; larger ones (none of ours) are cut
    as Django cuts them."""

    WHOLE = 16 * 2**20

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)

    async def send_response(self, response, send):
        """A `PiecesResponse` on a server that takes files (ZERO_COPY):
        its bytes as body messages, its files as zero-copy sends."""
        if not getattr(response, "zero_copy", False):
            return await super().send_response(response, send)
        headers = [(k.encode("ascii"), v.encode("latin1")) for k, v in response.items()]
        headers += [(b"Set-Cookie", c.output(header="").encode("ascii").strip()) for c in response.cookies.values()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        for piece in response.pieces:
            if not isinstance(piece, FileRange):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                continue
            with open_range(piece) as f:
                await send(
                    {"type": ZERO_COPY, "file": f, "offset": piece.offset, "count": piece.length, "more_body": True}
                )
        await send({"type": "http.response.body"})
        return None

    @classmethod
    def chunk_bytes(cls, data):
        if len(data) <= cls.WHOLE:
            yield data, True
            return
        yield from super().chunk_bytes(data)


django.setup(set_prefix=False)
from portal.streaming import ZERO_COPY, FileRange, open_range  # noqa: E402

django_asgi_app = Handler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from portal.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
