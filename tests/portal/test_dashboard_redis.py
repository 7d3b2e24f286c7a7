"""With REDIS_URL, an event recorded in another process reaches an open
dashboard through channels-redis, not only by polling.

The other process records into a database of its own, which the dashboard
never polls: the event can only have come over Redis.  Skipped, with the
reason shown, when no Redis answers (REDIS_URL, else 127.0.0.1:6379).
"""

import os
import socket
import subprocess
import sys
import textwrap
from urllib.parse import urlparse

import pytest
from asgiref.sync import async_to_sync

from tests.support.dashboard import dashboard_socket, session_cookie
from tests.support.processes import BASE_DIR, server_env

REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"


def redis_unreachable():
    parsed = urlparse(REDIS_URL)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    try:
        with socket.create_connection((host, port), timeout=1):
            return None
    except OSError as exc:
        return f"Redis not reachable at {host}:{port} ({exc.strerror or exc}): channels-redis test skipped"


pytestmark = pytest.mark.skipif(redis_unreachable() is not None, reason=redis_unreachable() or "")

# Runs in the other process: an Event table in its own SQLite file, then record().
RECORD = textwrap.dedent(
    """
    import django
    django.setup()
    from django.db import connection
    from pacs_site.models import Event
    from pacs_site.events import record
    with connection.schema_editor() as editor:
        editor.create_model(Event)
    record("study.received", "Study 20261127 CT received from REDISTEST", study_instance_uid="1.2.3.4",
           open_study=True, study_id=42)
    """
)


@pytest.fixture
def redis_layer(settings):
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}}
    }


def test_an_event_recorded_in_another_process_arrives_over_redis(
    redis_layer, transactional_db, django_user_model, data_dir, tmp_path
):
    cookie = session_cookie(django_user_model.objects.create_user("staff", is_staff=True))
    env = server_env(data_dir, REDIS_URL=REDIS_URL, DATABASE_URL=f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}")

    async def scenario():
        ws = dashboard_socket(cookie)
        connected, _ = await ws.connect()
        assert connected
        await ws.receive_json_from(timeout=5)
        proc = subprocess.run(
            [sys.executable, "-c", RECORD], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "not pushed" not in proc.stderr, proc.stderr
        message = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return message

    message = async_to_sync(scenario)()

    [item] = message["items"]
    assert (item["message"], item["open_study"]) == ("Study 20261127 CT received from REDISTEST", True)
    assert item["study_url"] == "/admin/dicomnodes/study/42/change/"
