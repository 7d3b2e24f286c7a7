"""Broken datasets are refused, kept, and do not end the association.

Raw bytes go out through pynetdicom (DCMTK will not send them): each case
is followed by a good instance on the same association, which is stored.
"""

import struct
from pathlib import Path

import pytest

from dicomnodes.models import DicomServerSettings, Instance, Series
from tests.support.processes import peak_rss_mb
from tests.support.rawdata import (
    DEFLATED,
    IMPLICIT,
    as_file,
    deflate,
    deflate_bomb,
    explicit_element,
    identifying,
    nested_sequences,
    raw_association,
)
from tests.support.transfer import dataset_sha256


def _quarantined(data_dir):
    folder = Path(data_dir) / "quarantine"
    return len(list(folder.iterdir())) if folder.exists() else 0


def _truncated_last_element():
    """The last element (Series Instance UID) says 26 bytes; 10 came."""
    uid, head = identifying()
    series = b"1.2.826.0.1.3680043.999.3\x00"
    return uid, head + explicit_element(0x0020, 0x000E, b"UI", series)[: 8 + 10]


def _huge_length():
    uid, head = identifying()
    return uid, head + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 0xFFFFFFF0) + b"\x00" * 64


def _deep(depth, closed):
    def build():
        uid, head = identifying()
        return uid, head + nested_sequences(depth, closed=closed)

    return build


def _bad_vr():
    uid, head = identifying()
    return uid, head + struct.pack("<HH2sH", 0x0011, 0x0010, b"\x01\x02", 4) + b"ABCD"


def _delimiter_at_top_level():
    uid, head = identifying()
    return uid, head + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def _item_past_its_sequence():
    """A sequence of 16 bytes whose item claims 100."""
    uid, head = identifying()
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 100) + b"\x00" * 8
    return uid, head + struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item


MALFORMED = {
    "last element runs past the end": _truncated_last_element,
    "element length 0xFFFFFFF0": _huge_length,
    "5,000 nested sequences": _deep(5000, closed=True),
    "2,000 nested sequences, never closed": _deep(2000, closed=False),
    "a VR that is no VR": _bad_vr,
    "sequence delimiter at the top level": _delimiter_at_top_level,
    "item longer than its sequence": _item_past_its_sequence,
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_dataset_is_refused_kept_and_the_association_goes_on(shared_scp, tmp_path, case):
    uid, data = MALFORMED[case]()
    bad = as_file(tmp_path / "bad.dcm", uid, data)
    good_uid, good_data = identifying()
    good = as_file(tmp_path / "good.dcm", good_uid, good_data)
    before = _quarantined(shared_scp.data_dir)
    with raw_association(shared_scp.port) as assoc:
        bad_status = assoc.send_c_store(bad)
        good_status = assoc.send_c_store(good)
    assert bad_status.Status == 0xC000, f"{case}: status {bad_status.Status:04X}"
    assert "Cannot understand" in bad_status.ErrorComment
    assert good_status.Status == 0x0000
    assert not Instance.objects.filter(sop_instance_uid=uid).exists()
    assert Instance.objects.filter(sop_instance_uid=good_uid).exists()
    assert _quarantined(shared_scp.data_dir) == before + 1, "the refused bytes are kept"


def test_the_truncated_uid_of_a_cut_dataset_is_never_indexed(shared_scp, tmp_path):
    uid, data = _truncated_last_element()
    with raw_association(shared_scp.port) as assoc:
        assert assoc.send_c_store(as_file(tmp_path / "cut.dcm", uid, data)).Status == 0xC000
    assert not Series.objects.filter(series_instance_uid__startswith="1.2.826.0.1.3680043.9").exists()


def test_an_instance_number_of_inf_is_stored_without_a_number(shared_scp, tmp_path):
    """A value pydicom cannot turn into a number is no reason to lose the
    image (it used to end in C211, the bytes nowhere)."""
    uid, head = identifying()  # its last element is (0020,000E)
    data = head + explicit_element(0x0020, 0x0011, b"IS", b"1e999 ") + explicit_element(0x0020, 0x0013, b"IS", b"inf ")
    with raw_association(shared_scp.port) as assoc:
        assert assoc.send_c_store(as_file(tmp_path / "inf.dcm", uid, data)).Status == 0x0000
    stored = Instance.objects.get(sop_instance_uid=uid)
    assert stored.instance_number is None
    assert stored.series.series_number is None


def test_an_implicit_vr_dataset_with_sequences_is_stored(shared_scp, tmp_path):
    """In implicit VR a defined-length sequence is found by its tag."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    uid, data = identifying(implicit=True, ReferencedImageSequence=Sequence([item]))
    with raw_association(shared_scp.port, transfer_syntaxes=(IMPLICIT,)) as assoc:
        assert assoc.send_c_store(as_file(tmp_path / "seq.dcm", uid, data, IMPLICIT)).Status == 0x0000
    assert Instance.objects.filter(sop_instance_uid=uid).exists()


def test_a_deflated_dataset_is_stored_as_received(shared_scp, tmp_path):
    uid, data = identifying(StudyDescription="Deflated")
    with raw_association(shared_scp.port, transfer_syntaxes=(DEFLATED,)) as assoc:
        assert assoc.send_c_store(as_file(tmp_path / "dfl.dcm", uid, deflate(data), DEFLATED)).Status == 0x0000
    stored = Instance.objects.get(sop_instance_uid=uid)
    assert stored.transfer_syntax_uid == DEFLATED
    assert stored.series.study.study_description == "Deflated"


def test_a_deflated_dataset_that_is_malformed_inside_is_refused(shared_scp, tmp_path):
    uid, data = _huge_length()
    with raw_association(shared_scp.port, transfer_syntaxes=(DEFLATED,)) as assoc:
        status = assoc.send_c_store(as_file(tmp_path / "dfl.dcm", uid, deflate(data), DEFLATED))
    assert status.Status == 0xC000, status
    assert "(0009,1010) length 4294967280 past the end" in status.ErrorComment


def test_a_deflate_bomb_is_refused_and_runscp_stays_small(start_scp, tmp_path):
    """About 8 MB on the wire that inflate to 8 GiB: refused at the default
    limit (1024 MB) with the bytes in quarantine; runscp's peak memory stays
    under 300 MB; a good instance follows on the same association."""
    assert DicomServerSettings.load().max_inflated_mb == 1024
    scp = start_scp()
    uid, head = identifying()
    bomb = deflate_bomb(head + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 0xFFFFFFFE), 8 * 2**30)
    assert len(bomb) < 10 * 2**20
    good_uid, good_data = identifying()
    with raw_association(scp.port, transfer_syntaxes=(DEFLATED,)) as assoc:
        status = assoc.send_c_store(as_file(tmp_path / "bomb.dcm", uid, bomb, DEFLATED))
        good = assoc.send_c_store(as_file(tmp_path / "good.dcm", good_uid, deflate(good_data), DEFLATED))
    assert status.Status == 0xC000
    assert "inflates beyond 1024 MB" in status.ErrorComment
    assert good.Status == 0x0000
    assert _quarantined(scp.data_dir) == 1
    assert not Instance.objects.filter(sop_instance_uid=uid).exists()
    assert peak_rss_mb(scp.proc.pid) < 300


def test_a_256_mb_instance_arrives_into_a_file_not_into_memory(start_scp, tmp_path):
    """A dataset above 4 MB goes on arriving into a file: runscp's peak
    memory stays far below the dataset's size, and the stored dataset is
    the sent one, byte for byte."""
    from dicomnodes.archive.storage import instance_path

    scp = start_scp()
    uid, head = identifying(Rows=8192, Columns=16384, BitsAllocated=16, BitsStored=16, SamplesPerPixel=1)
    pixels = 8192 * 16384 * 2
    path = as_file(tmp_path / "big.dcm", uid, head + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixels))
    with open(path, "r+b") as f:  # 256 MB of zeros, without writing them
        f.truncate(f.seek(0, 2) + pixels)
    with raw_association(scp.port) as assoc:
        assert assoc.send_c_store(path).Status == 0x0000
    stored = instance_path(uid, scp.data_dir / "storage")
    assert dataset_sha256(stored) == dataset_sha256(path)
    assert peak_rss_mb(scp.proc.pid) < 200, "the dataset did not go through runscp's memory"
