"""What the web process should be running with, from the HTTP settings.

`manage.py runpacs` calls `load_web_config()` every couple of seconds and
restarts the web process when the answer changes (port, TLS, or the
certificate or key file replaced on disk, e.g. renewed).
"""

import logging
import os
import sys
from dataclasses import dataclass

from django.db import DatabaseError, connection

from pacs_site.env import envbool, envint
from pacs_site.tls import check_certificate_pair
from portal.daphne_server import endpoint
from portal.models import HttpSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebConfig:
    port: int  # 0: the web server is off
    tls: bool = False
    certificate: str = ""
    key: str = ""
    # Modification times of the two files: a renewed certificate restarts the web.
    stamp: tuple = ()

    def describe(self) -> str:
        if not self.port:
            return "off (port 0)"
        return f"{'https' if self.tls else 'http'} on port {self.port}"


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def load_web_config(current: WebConfig | None = None) -> WebConfig:
    """The HTTP settings row; PACS_WEB_PORT, when set, overrides its port.
    When the database does not answer, `current` stays (a database restart
    must not move the web server), or the defaults before the first read
    (not migrated yet)."""
    try:
        row = HttpSettings.load()
    except DatabaseError as exc:
        if current is not None:
            logger.warning("cannot read the HTTP settings (%s); the web server keeps its settings", exc)
            return current
        row = HttpSettings()
    finally:
        connection.close()  # a supervisor must not hold SQLite locks between polls
    port = envint("PACS_WEB_PORT", row.web_port, minimum=0, maximum=65535)
    if not row.tls_enabled:
        return WebConfig(port)
    cert, key = row.tls_certificate_file, row.tls_key_file
    return WebConfig(port, True, cert, key, (_mtime(cert), _mtime(key)))


def web_problems(config: WebConfig) -> list:
    """Why the web process cannot start with `config` ([] if it can)."""
    if not config.tls:
        return []
    return [str(p) for p in check_certificate_pair(config.certificate, config.key)]


def web_argv(config: WebConfig) -> list:
    """daphne (with the query-free access log) for `config`.  With
    PACS_PROXY_HEADERS=1 (behind a reverse proxy) the client address comes
    from X-Forwarded-For; otherwise that header is ignored, so a client
    cannot pick its own address to slip past the token rate limit."""
    if config.tls and not (config.certificate and config.key):
        raise ValueError("TLS is on but the certificate or key file is missing")  # never fall back to http
    argv = [sys.executable, "-m", "portal.daphne_server"]
    argv += ["-e", endpoint(config.port, certificate=config.certificate, key=config.key)]
    if envbool("PACS_PROXY_HEADERS", False):
        argv.append("--proxy-headers")
    return argv + ["pacs_site.asgi:application"]
