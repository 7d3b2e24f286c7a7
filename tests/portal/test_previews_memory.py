"""A patient link to a study of 2,000-frame 512 x 512 images, opened with its
previews in the real web process (`manage.py runpacs --only web`): the
process decodes one frame per preview, so its peak memory stays far below
the 1 GiB of each image's pixel data.

Persona: a patient with a token.
"""

import re

import numpy as np
import psutil
import pytest

from portal.models import HttpSettings
from portal.tokens import create_token
from tests.support.archive import archive_files
from tests.support.multiframe import RepeatedFrames, multiframe_header, rle_frame, write_native, write_rle
from tests.support.portal import fetch, start_runpacs_web, wait_for_web
from tests.support.processes import free_port, peak_rss_mb

FRAMES, SIZE = 2000, 512
LIMIT_MB = 500


@pytest.fixture(scope="module")
def big_images(tmp_path_factory):
    """Two 2,000-frame 512 x 512 16-bit images of one study, made once: one
    uncompressed (a 1 GiB file, written frame by frame) and one RLE (1 GiB
    once decoded)."""
    folder = tmp_path_factory.mktemp("big")
    ramp = np.repeat(np.arange(SIZE, dtype=np.uint16)[:, None] * 8, SIZE, axis=1)
    flat = np.zeros((SIZE, SIZE), np.uint16)
    native = multiframe_header(rows=SIZE, columns=SIZE, frames=FRAMES, series_number=1)
    study = native.StudyInstanceUID
    write_native(folder / "native.dcm", native, RepeatedFrames(flat.tobytes(), FRAMES, ramp.tobytes()))
    rle = multiframe_header(rows=SIZE, columns=SIZE, frames=FRAMES, study_uid=study, series_number=2)
    write_rle(folder / "rle.dcm", rle, RepeatedFrames(rle_frame(flat), FRAMES, rle_frame(ramp)))
    return [folder / "native.dcm", folder / "rle.dcm"]


def web_process(runpacs):
    (daphne,) = [p for p in psutil.Process(runpacs.proc.pid).children() if "daphne_server" in " ".join(p.cmdline())]
    return daphne


def test_a_link_to_2000_frame_images_keeps_the_web_process_under_500_mb(
    big_images, transactional_db, data_dir, tmp_path
):
    instances = archive_files(big_images)
    study = instances[0].series.study
    assert study.num_series == 2
    row = HttpSettings.load()
    row.web_port = port = free_port()
    row.save()
    token = create_token(study).clear
    web = start_runpacs_web(data_dir, tmp_path / "runpacs.log")
    try:
        wait_for_web(f"http://127.0.0.1:{port}/admin/login/", web)
        status, _, page = fetch(f"http://127.0.0.1:{port}/token?{token}")
        assert status == 200
        previews = re.findall(r'src="(/token/preview/\d+\?[^"]+)"', page.decode())
        assert len(previews) == 2
        for url in previews:
            status, headers, body = fetch(f"http://127.0.0.1:{port}{url.replace('&amp;', '&')}", timeout=120)
            assert (status, headers["Content-Type"]) == (200, "image/png"), body[:200]
            assert body.startswith(b"\x89PNG")
        peak = peak_rss_mb(web_process(web).pid)
        print(f"web process peak RSS: {peak:.0f} MB")
        assert peak < LIMIT_MB
    finally:
        web.stop()
