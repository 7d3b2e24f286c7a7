"""Loaded with `-p tests.pacs_env` before Django settings are read.

1. Every test run gets a fresh data folder (PACS_DATA_DIR), unless given.
2. With DATABASE_URL pointing at PostgreSQL that does not answer, every test
   is skipped with the reason shown (a fresh machine has no PostgreSQL).
3. A run started in the background (bin/test's PostgreSQL run) inherits
   SIGINT ignored: Ctrl-C gets its KeyboardInterrupt back, so that it stops
   through its teardown and the servers it started stop with it.
"""

import os
import signal
import socket
import tempfile
from urllib.parse import urlparse

import pytest

os.environ.setdefault("PACS_DATA_DIR", tempfile.mkdtemp(prefix="pacs-test-"))
os.environ.setdefault("TCP_NODELAY", "1")  # for DCMTK and Orthanc started by tests
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _postgres_unreachable():
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return None
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 5432
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"PostgreSQL not reachable at {host}:{port} ({exc.strerror or exc}); DATABASE_URL tests skipped"


def pytest_collection_modifyitems(config, items):
    reason = _postgres_unreachable()
    if reason:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=reason))
