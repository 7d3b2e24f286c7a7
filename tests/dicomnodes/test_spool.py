"""The spool a received data set is written into as it arrives
(dicomnodes/archive/spool.py): its own write buffer, the views and regions
the store path reads, and the writeback it starts when the file will be
synced."""

import ctypes
import errno
import os

import pytest

from dicomnodes.archive import storage
from dicomnodes.archive.spool import WRITE_BUFFER, SpoolFile

PREFIX = b"\0" * 128 + b"DICM" + b"meta"


def pieces(total, size):
    data = bytes((i * 7 + i // 251) % 256 for i in range(total))
    return data, [data[i : i + size] for i in range(0, total, size)]


@pytest.mark.parametrize("size", [1, 16372, WRITE_BUFFER - 1, WRITE_BUFFER, 3 * WRITE_BUFFER + 5])
def test_what_is_written_in_pieces_of_any_size_reads_back_whole_after_the_prefix(data_dir, tmp_path, size):
    data, parts = pieces(2 * WRITE_BUFFER + 12345 if size > 1 else 70_000, size)
    path = tmp_path / "ab" / "cd" / "instance"
    spool = SpoolFile(b"head-", prefix=PREFIX, place_at=path)
    try:
        for part in parts:
            spool.write(memoryview(part))
        assert spool.tell() == len(b"head-") + len(data)
        with spool.getbuffer() as view:
            assert bytes(view) == b"head-" + data
        region = spool.region()
        assert (region.offset, len(region)) == (len(PREFIX), len(b"head-") + len(data))
        assert os.pread(spool.fileno(), len(PREFIX), 0) == PREFIX
    finally:
        spool.close()


def test_a_spool_for_a_known_path_is_nameless_in_its_folder_until_adopted(data_dir, tmp_path):
    path = tmp_path / "ab" / "cd" / "instance"
    spool = SpoolFile(b"data", prefix=PREFIX, place_at=path)
    try:
        assert os.readlink(f"/proc/self/fd/{spool.fileno()}").startswith(f"{path.parent}/#")
        assert list(path.parent.iterdir()) == []
        assert spool.adopt(tmp_path / "elsewhere", PREFIX) is None  # not the path it was made for
        assert spool.adopt(path, PREFIX + b"x") is None  # not the file meta it begins with
        placed = spool.adopt(path, PREFIX)
        placed.finish(True)
        assert (placed.is_new, path.read_bytes()) == (True, PREFIX + b"data")
        assert spool.adopt(path, PREFIX) is None  # once
    finally:
        spool.close()
    assert path.read_bytes() == PREFIX + b"data"  # closing the spool leaves the linked file


def test_closing_an_unadopted_spool_leaves_nothing(data_dir, tmp_path):
    path = tmp_path / "ab" / "cd" / "instance"
    spool = SpoolFile(b"data" * 70_000, prefix=PREFIX, place_at=path)
    spool.write(b"more")  # still in the buffer: dropped
    spool.close()
    assert list(path.parent.iterdir()) == []


def test_with_writeback_every_byte_written_has_its_writeback_started_once(data_dir, tmp_path, monkeypatch):
    started = []
    real = storage.start_writeback

    def recording(fd, offset, length):
        started.append((offset, length))
        real(fd, offset, length)

    monkeypatch.setattr(storage, "start_writeback", recording)
    data, parts = pieces(3 * WRITE_BUFFER + 999, 16372)
    spool = SpoolFile(b"", prefix=PREFIX, place_at=tmp_path / "ab" / "cd" / "x", writeback=True)
    try:
        for part in parts:
            spool.write(part)
        spool.fileno()
        covered = 0
        for offset, length in started:
            assert offset == covered  # in order, no gap, no overlap
            covered += length
        assert covered == len(PREFIX) + len(data)
        assert len(started) <= 5  # a buffer at a time, not a fragment at a time
    finally:
        spool.close()
    started.clear()
    quiet = SpoolFile(b"x" * WRITE_BUFFER * 2, prefix=PREFIX, place_at=tmp_path / "ab" / "cd" / "y")
    quiet.fileno()
    quiet.close()
    assert started == []  # no fsync on store: no writeback asked


@pytest.mark.skipif(storage._sync_file_range is None, reason="no sync_file_range in this libc")
def test_start_writeback_calls_the_kernels_sync_file_range(tmp_path):
    """The ctypes binding is right: the call succeeds on a written file and
    the kernel refuses a closed descriptor (EBADF)."""
    fd = os.open(tmp_path, os.O_RDWR | os.O_TMPFILE, 0o600)
    os.write(fd, b"x" * 100_000)
    try:
        assert storage._sync_file_range(fd, 0, 100_000, storage._SYNC_FILE_RANGE_WRITE) == 0
    finally:
        os.close(fd)
    assert storage._sync_file_range(fd, 0, 100_000, storage._SYNC_FILE_RANGE_WRITE) == -1
    assert ctypes.get_errno() == errno.EBADF
    storage.start_writeback(fd, 0, 1)  # refused quietly: only a hint
