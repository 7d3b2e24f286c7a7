"""The web process under `manage.py runpacs`: it follows the HTTP settings
(port, port 0, TLS) by itself, serves HTTPS with a certificate made here,
keeps tokens out of its access log, and sends a download no faster than the
client reads it.

Persona: a patient with a token.
"""

import io
import socket
import ssl
import time
import urllib.error
import zipfile

import psutil
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from portal.daphne_server import endpoint, strip_query
from portal.models import HttpSettings
from portal.tokens import create_token
from portal.webprocess import WebConfig, web_argv
from tests.support.dicomdata import make_ct
from tests.support.portal import fetch, index_files, self_signed, start_runpacs_web, store_study, wait_for_web
from tests.support.processes import free_port, port_accepts, wait_until


def http_settings(**values):
    row = HttpSettings.load()
    for name, value in values.items():
        setattr(row, name, value)
    row.save()
    return row


@pytest.fixture
def runpacs_web(transactional_db, data_dir, tmp_path):
    started = []

    def start():
        web = start_runpacs_web(data_dir, tmp_path / f"runpacs-{len(started)}.log")
        started.append(web)
        return web

    yield start
    for web in started:
        web.stop()


def test_the_web_server_follows_the_port_of_the_http_settings(runpacs_web):
    first, second = free_port(), free_port()
    http_settings(web_port=first)
    web = runpacs_web()
    wait_for_web(f"http://127.0.0.1:{first}/admin/login/", web)

    http_settings(web_port=second)
    wait_for_web(f"http://127.0.0.1:{second}/admin/login/", web)
    assert not port_accepts(first)

    http_settings(web_port=0)
    wait_until(lambda: not port_accepts(second), 15, 0.2, "the web server to stop")
    web.wait_for_log("web server disabled (port 0)")
    assert web.proc.poll() is None


def test_tls_serves_the_token_page_over_https_with_the_configured_certificate(runpacs_web, tmp_path):
    cert, key = self_signed(tmp_path / "tls")
    port = free_port()
    http_settings(
        web_port=port,
        institution="General Hospital",
        tls_enabled=True,
        tls_certificate_file=str(cert),
        tls_key_file=str(key),
    )
    study = store_study(tmp_path, patient_name="Doe^Jane")
    token = create_token(study).clear
    trusting = ssl.create_default_context(cafile=str(cert))
    web = runpacs_web()
    wait_for_web(f"https://127.0.0.1:{port}/admin/login/", web, context=trusting)

    status, headers, body = fetch(f"https://127.0.0.1:{port}/token?{token}", context=trusting)

    assert status == 200
    assert "General Hospital" in body.decode() and "Doe, Jane" in body.decode()
    assert headers["Referrer-Policy"] == "no-referrer"
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch(f"https://127.0.0.1:{port}/admin/login/", context=ssl.create_default_context())
    status, _, body = fetch(f"https://127.0.0.1:{port}/token/download/{study.pk}?{token}", context=trusting)
    assert status == 200 and len(zipfile.ZipFile(io.BytesIO(body)).namelist()) == 7
    status, _, _ = fetch(f"https://127.0.0.1:{port}/token?{token}x", context=trusting)
    assert status == 404
    # daphne's access log shows the request, by path only.
    wait_until(lambda: "/token" in web.log(), 5, message="the access log line")
    assert token not in web.log()
    assert "Traceback" not in web.log() and "not unregistered" not in web.log()


def test_turning_tls_on_restarts_the_web_server_with_https(runpacs_web, tmp_path):
    port = free_port()
    http_settings(web_port=port)
    web = runpacs_web()
    wait_for_web(f"http://127.0.0.1:{port}/admin/login/", web)

    cert, key = self_signed(tmp_path / "tls")
    http_settings(tls_enabled=True, tls_certificate_file=str(cert), tls_key_file=str(key))
    trusting = ssl.create_default_context(cafile=str(cert))

    def speaks_https():
        try:
            return fetch(f"https://127.0.0.1:{port}/admin/login/", context=trusting, timeout=2)[0] == 200
        except OSError:
            return False

    wait_until(speaks_https, 30, 0.3, "https on the same port")
    assert "web settings changed: http on port" in web.log()


def test_unusable_tls_files_keep_the_web_server_off_rather_than_serve_plain_http(runpacs_web, tmp_path):
    port = free_port()
    # Saved behind the admin's back (the admin would refuse it).
    HttpSettings.objects.update_or_create(
        pk=1, defaults={"web_port": port, "tls_enabled": True, "tls_certificate_file": str(tmp_path / "gone.crt")}
    )
    web = runpacs_web()
    web.wait_for_log("web server not started:")
    assert "gone.crt does not exist" in web.log()
    assert not port_accepts(port)


def test_the_access_log_drops_query_strings():
    details = {"path": "/token?secret", "status": 200, "method": "GET", "client": "x", "size": 1}
    assert strip_query(details)["path"] == "/token"
    assert strip_query({"path": "/admin/"})["path"] == "/admin/"


def test_the_access_log_hides_the_token_of_a_patient_links_dicomweb_root():
    details = {"path": "/dicomweb/t/SECRET-token_x/studies/1.2/series?limit=5", "status": 200}
    assert strip_query(details)["path"] == "/dicomweb/t/…/studies/1.2/series"
    assert strip_query({"path": "/dicomweb/t/SECRET"})["path"] == "/dicomweb/t/…"
    assert strip_query({"path": "/dicomweb/studies"})["path"] == "/dicomweb/studies"


def test_the_endpoint_escapes_colons_in_file_paths():
    assert endpoint(443, certificate="/c:x.crt", key="/k.key") == (
        "ssl:port=443:interface=\\:\\::privateKey=/k.key:certKey=/c\\:x.crt"
    )
    assert endpoint(3000) == "tcp:port=3000:interface=\\:\\:"


def test_client_addresses_come_from_forwarded_headers_only_when_asked(monkeypatch):
    assert "--proxy-headers" not in web_argv(WebConfig(3000))
    monkeypatch.setenv("PACS_PROXY_HEADERS", "1")
    assert "--proxy-headers" in web_argv(WebConfig(3000))


def test_tls_without_files_never_becomes_plain_http():
    with pytest.raises(ValueError):
        web_argv(WebConfig(3000, tls=True))


def big_study(tmp_path, count=24, size=1024):
    """`count` CT images of size² 16-bit pixels (2 MiB each), stored and indexed."""
    template = pydicom.dcmread(make_ct(tmp_path / "template.dcm", size=size))
    folder = tmp_path / "big"
    folder.mkdir()
    series_uid = generate_uid()
    for i in range(count):
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.SeriesInstanceUID, template.InstanceNumber = series_uid, i + 1
        template.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    return index_files(sorted(folder.iterdir()))


def test_a_client_that_does_not_read_holds_back_the_download_instead_of_filling_memory(runpacs_web, tmp_path):
    port = free_port()
    http_settings(web_port=port)
    study = big_study(tmp_path)  # 48 MiB
    token = create_token(study).clear
    web = runpacs_web()
    wait_for_web(f"http://127.0.0.1:{port}/admin/login/", web)
    daphne = next(p for p in psutil.Process(web.proc.pid).children() if "pacs_site.asgi" in " ".join(p.cmdline()))
    # The link's page first: what the first request loads (views, the audit
    # spool's thread and connection) is not what is measured.
    assert requests.get(f"http://127.0.0.1:{port}/token?{token}", timeout=30).status_code == 200
    before = daphne.memory_info().rss

    with socket.create_connection(("127.0.0.1", port)) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.sendall(f"GET /token/download/{study.pk}?{token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        time.sleep(4)  # the client reads nothing meanwhile
        held = daphne.memory_info().rss - before
        received = 0
        client.settimeout(20)
        while chunk := client.recv(1 << 20):
            received += len(chunk)
            if chunk.endswith(b"0\r\n\r\n"):
                break

    assert held < 20 * 2**20, f"daphne grew by {held / 2**20:.0f} MiB while the client read nothing"
    assert received > 48 * 2**20
