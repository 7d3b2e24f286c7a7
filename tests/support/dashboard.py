"""Helpers for the dashboard tests: a websocket client with a staff (or
other) session, against the real ASGI application."""

from channels.testing import WebsocketCommunicator
from django.test import Client


def session_cookie(user):
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def dashboard_socket(cookie=None, *, origin="http://localhost"):
    """A WebsocketCommunicator for /ws/dashboard/ through pacs_site.asgi
    (origin check, session auth, routing), as a browser would connect."""
    from pacs_site.asgi import application

    headers = [(b"origin", origin.encode())]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)


async def receive_items(socket, predicate, timeout=5.0):
    """Messages until one holds an item for which `predicate` is true; returns that item."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError("no matching dashboard item within %.1f s" % timeout)
        message = await socket.receive_json_from(timeout=remaining)
        for item in message["items"]:
            if predicate(item):
                return item
