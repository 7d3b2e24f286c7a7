"""The dashboard's websocket: a snapshot, then what changed, about every 0.5 s.

Why polling: runscp, runmllp and the django-q2 workers write their rows in
processes of their own, and the embedded default's channel layer (in
memory, no Redis) lives inside the web server, where they cannot reach it.
So each open dashboard asks the database, twice a second, for rows newer
than what it has shown (`portal.dashboard.Feed`: a few queries on indexed
columns, each answering a handful of rows).  With `REDIS_URL` set the
channel layer is channels-redis, shared by all processes: the consumer also
joins the "dashboard" group, to which `pacs_site.events.record()` sends
every event once it is committed, so studies show at once; the poll still
carries the rest and drops the events it has already sent.

Each open dashboard does its database work in a thread of its own, which
keeps one connection for the life of the page (on PostgreSQL a new
connection twice a second would cost more than the queries); a failed query
closes it, and the next poll opens a new one.

Staff only: the handshake of anyone else is refused (HTTP 403).
"""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db import connection

from pacs_site.events import DASHBOARD_GROUP
from portal.dashboard import POLL_INTERVAL, Feed

logger = logging.getLogger(__name__)


class DashboardConsumer(AsyncJsonWebsocketConsumer):
    poll_interval = POLL_INTERVAL

    async def connect(self):
        user = self.scope.get("user")
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            await self.close()  # before accept: the handshake is refused
            return
        self.feed = Feed()
        self.poller = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard")
        await self.accept()
        if self.channel_layer is not None:
            await self.channel_layer.group_add(DASHBOARD_GROUP, self.channel_name)
        await self.send_json({"type": "snapshot", "items": await self._in_thread(self.feed.snapshot)})
        self.poller = asyncio.ensure_future(self._poll_forever())

    async def disconnect(self, code):
        if getattr(self, "feed", None) is None:
            return  # refused at the handshake
        if self.poller is not None:
            self.poller.cancel()
        if self.channel_layer is not None:
            await self.channel_layer.group_discard(DASHBOARD_GROUP, self.channel_name)
        await self._in_thread(_close_connection)
        self.executor.shutdown(wait=False)

    async def _in_thread(self, work):
        return await asyncio.get_running_loop().run_in_executor(self.executor, _closing_on_error, work)

    async def receive_json(self, content, **kwargs):
        """The page sends nothing we act on."""

    async def _poll_forever(self):
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                items = await self._in_thread(self.feed.poll)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A locked or restarting database: try again at the next tick.
                logger.exception("dashboard poll failed")
                continue
            if items:
                await self.send_json({"type": "update", "items": items})

    async def dashboard_event(self, message):
        """An event pushed by `pacs_site.events.record()` over channels-redis."""
        item = message["item"]
        if self.feed.is_new_event(item["id"]):
            await self.send_json({"type": "update", "items": [item]})


def _closing_on_error(work):
    """Run `work` in the dashboard's thread; after an error the thread's
    connection is closed, so the next call starts on a fresh one."""
    try:
        return work()
    except Exception:
        connection.close()
        raise


def _close_connection():
    # Looked up here, in the dashboard's thread: `connection.close` taken in
    # the event loop would be the loop thread's connection.
    connection.close()
