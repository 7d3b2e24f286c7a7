"""A 384 MiB uncompressed image retrieved through WADO-RS from the real web
process: the instance, its Pixel Data as bulk data, and one of its frames.
The process streams the file in chunks and reads one frame at its offset, so
its peak memory stays far below the image's size.

Persona: a reader (staff with the view permissions, API token).
"""

import hashlib

import numpy as np
import psutil
import requests
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from portal.models import HttpSettings
from tests.support.archive import archive_files
from tests.support.multiframe import RepeatedFrames, multiframe_header, write_native
from tests.support.portal import start_runpacs_web, wait_for_web
from tests.support.processes import free_port, peak_rss_mb

FRAMES, SIZE = 768, 512  # 768 × 512 × 512 × 2 bytes = 384 MiB
LIMIT_MB = 250


def web_process(runpacs):
    (daphne,) = [p for p in psutil.Process(runpacs.proc.pid).children() if "daphne_server" in " ".join(p.cmdline())]
    return daphne


def test_a_384_mib_image_goes_out_without_the_web_process_holding_it(
    transactional_db, data_dir, tmp_path, django_user_model
):
    flat = np.zeros((SIZE, SIZE), np.uint16)
    ramp = np.repeat(np.arange(SIZE, dtype=np.uint16)[:, None], SIZE, axis=1)
    header = multiframe_header(rows=SIZE, columns=SIZE, frames=FRAMES)
    source = write_native(tmp_path / "big.dcm", header, RepeatedFrames(flat.tobytes(), FRAMES, ramp.tobytes()))
    (instance,) = archive_files([source])
    source.unlink()
    http = HttpSettings.load()
    http.web_port = free_port()
    http.save()
    reader = django_user_model.objects.create_user("memreader", password=None, is_staff=True)
    reader.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    session = requests.Session()
    session.headers["Authorization"] = f"Token {Token.objects.create(user=reader).key}"
    series = instance.series
    url = (
        f"http://127.0.0.1:{http.web_port}/dicomweb/studies/{series.study.study_instance_uid}"
        f"/series/{series.series_instance_uid}/instances/{instance.sop_instance_uid}"
    )
    web = start_runpacs_web(data_dir, tmp_path / "runpacs.log")
    try:
        wait_for_web(f"http://127.0.0.1:{http.web_port}/admin/login/", web)
        stored = hashlib.sha256()
        with open(instance.path, "rb") as f:
            while chunk := f.read(1 << 22):
                stored.update(chunk)
        for path in ("", "/bulkdata/7FE00010"):
            with session.get(url + path, stream=True, timeout=120) as response:
                assert response.status_code == 200
                received = sum(len(chunk) for chunk in response.iter_content(1 << 20))
            assert received > FRAMES * SIZE * SIZE * 2
        # The whole-instance part is the stored file (sent by sendfile, the
        # web process's zero-copy path): its bytes after the part's head
        # hash as the file does, once the closing boundary is cut off.
        with session.get(url, stream=True, timeout=120) as response:
            length = int(response.headers["Content-Length"])
            boundary = response.headers["Content-Type"].split("boundary=")[1].encode()
            body = hashlib.sha256()
            head = b""
            tail = len(b"\r\n--" + boundary + b"--\r\n")
            seen = 0
            for chunk in response.iter_content(1 << 20):
                seen += len(chunk)
                if not head:
                    head, _, chunk = chunk.partition(b"\r\n\r\n")
                    assert head.startswith(b"--" + boundary)
                keep = len(chunk) - max(0, tail - (length - seen))
                body.update(chunk[:keep])
        assert seen == length
        assert body.hexdigest() == stored.hexdigest()
        middle = session.get(f"{url}/frames/{FRAMES // 2 + 1}", timeout=60)
        assert ramp.tobytes() in middle.content
        peak = peak_rss_mb(web_process(web).pid)
        print(f"web process peak RSS: {peak:.0f} MB")
        assert peak < LIMIT_MB
    finally:
        web.stop()
