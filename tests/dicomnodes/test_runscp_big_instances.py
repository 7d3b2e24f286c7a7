"""Big instances arrive with flat memory, four associations at once (issue 14,
"Big instances").

test_runscp_malformed.py sends one 256 MB dataset over one association;
here four storescu each send a 64 MB multi-frame instance to one runscp
process at the same time: every dataset goes to its spool file as it
arrives, so the process's peak memory does not grow with the number of big
instances in flight.
"""

import hashlib
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydicom import dcmread

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance
from tests.support.dicomdata import make_ct
from tests.support.multiframe import RepeatedFrames, multiframe_header, write_native
from tests.support.processes import peak_rss_mb
from tests.support.transfer import dataset_sha256

SENDERS = 4
ROWS = COLUMNS = 512
FRAMES = 128  # 128 frames of 512 × 512 × 16 bits: 64 MiB of Pixel Data
FRAME_BYTES = ROWS * COLUMNS * 2
# Measured (2 CPUs, Debian 12): runscp's peak RSS is ≈135 MB after one small
# store and ≈151 MB after the four big ones, +16 MB: four 4 MiB in-memory
# starts (SPILL_AT) before each spool file takes over.  One dataset held
# whole would add 64 MB, all four 256 MB.
GROWTH_BOUND_MB = 48
PEAK_BOUND_MB = 200
# runscp's log lines (dicomnodes/scp/acceptor.py) of an association's start and end.
_LIFE = re.compile(r"\] association \S+ (?:from .* (accepted)$|released: |aborted: )", re.MULTILINE)


@pytest.fixture
def four_big_instances(tmp_path):
    """Four 64 MiB instances of one study, each with a middle frame of its
    own (so a mix-up of their bytes would show)."""
    study = None
    paths = []
    for n in range(SENDERS):
        ds = multiframe_header(rows=ROWS, columns=COLUMNS, frames=FRAMES, study_uid=study, series_number=n + 1)
        study = ds.StudyInstanceUID
        middle = hashlib.sha256(bytes([n])).digest() * (FRAME_BYTES // 32)
        frames = RepeatedFrames(bytes(range(256)) * (FRAME_BYTES // 256), FRAMES, middle)
        paths.append(write_native(tmp_path / "big" / f"mf{n}.dcm", ds, frames))
    return paths


def test_four_64_mb_instances_at_once_are_stored_whole_with_flat_memory(start_scp, four_big_instances, tmp_path):
    """1. One small store first: the code paths of a C-STORE are loaded, so
          what follows measures what the big datasets cost.
    2. Four storescu at once, one 64 MiB instance each.
    3. The four were in flight together (four starts before the first end);
       each is indexed and its dataset stored byte for byte; runscp's peak
       grew by less than one dataset."""
    scp = start_scp(processes=1)
    warm_up = scp.store(make_ct(tmp_path / "small.dcm"))
    assert warm_up.returncode == 0, warm_up.stderr
    before = peak_rss_mb(scp.proc.pid)
    since = scp.log_offset()

    with ThreadPoolExecutor(SENDERS) as pool:
        results = list(pool.map(scp.store, four_big_instances))
    assert [r.returncode for r in results] == [0] * SENDERS, [r.stderr for r in results]
    peak = peak_rss_mb(scp.proc.pid)

    life = ["start" if accepted else "end" for accepted in _LIFE.findall(scp.log_since(since))]
    assert life[:SENDERS] == ["start"] * SENDERS, life
    for path in four_big_instances:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert Instance.objects.filter(sop_instance_uid=uid).exists()
        assert dataset_sha256(instance_path(uid, scp.data_dir / "storage")) == dataset_sha256(path)
    assert peak - before < GROWTH_BOUND_MB, f"peak {peak:.0f} MB, {peak - before:.0f} MB above {before:.0f} MB"
    assert peak < PEAK_BOUND_MB
