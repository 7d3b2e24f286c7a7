"""runscp converts a compressed instance to little endian for a C-MOVE
destination that cannot take its transfer syntax, within the DICOM server
setting "largest decoded pixel data": above it, nothing is decoded and the
sub-operation fails (DCMTK movescu into a storescp that accepts only
uncompressed syntaxes)."""


import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnodes.models import DicomServerSettings, Instance, Peer
from tests.dicomnodes.test_runscp_retrieve import VIEWER, move_destination, qr, received, study_keys
from tests.support.dicomdata import fresh_copy
from tests.support.multiframe import multiframe_header, rle_frame, write_rle


@pytest.fixture
def plain_storescp(shared_scp, tmp_path):
    """A DCMTK storescp (AE PLAIN) that accepts uncompressed syntaxes only,
    declared as a move destination; yields its output folder."""
    with move_destination(shared_scp, tmp_path / "received", "PLAIN") as out:
        yield out


@pytest.fixture
def two_rle_images(shared_scp, tmp_path):
    """A study of two RLE images stored as RLE: a 1024 x 1024 16-bit one (2 MB
    decoded) and a 64 x 64 one; a viewer peer that may retrieve."""
    study = generate_uid()
    ramp = np.repeat(np.arange(1024, dtype=np.uint16)[:, None], 1024, axis=1)
    big = multiframe_header(rows=1024, columns=1024, frames=1, study_uid=study, PatientID="P1")
    write_rle(tmp_path / "rle" / "big.dcm", big, [rle_frame(ramp)])
    fresh_copy("MR_small_RLE.dcm", tmp_path / "rle" / "small.dcm", StudyInstanceUID=study, PatientID="P1")
    assert shared_scp.store(tmp_path / "rle", options=["-xr"]).returncode == 0
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True, may_retrieve=True)
    shared_scp.wait_until_allowed(VIEWER, "move")
    return study, str(big.SOPInstanceUID)


def test_a_move_converts_what_fits_the_decoding_limit_and_fails_the_rest(shared_scp, two_rle_images, plain_storescp):
    study, big_uid = two_rle_images
    row = DicomServerSettings.load()
    row.max_decoded_mb = 1
    row.save()  # read by runscp at each C-MOVE

    result = qr("movescu", shared_scp, *study_keys(study), options=["-d", "-aem", "PLAIN"])

    output = result.stdout + result.stderr
    (arrived,) = received(plain_storescp)
    small = pydicom.dcmread(arrived)
    assert small.Rows == 64 and small.file_meta.TransferSyntaxUID.is_little_endian
    assert not small.file_meta.TransferSyntaxUID.is_compressed
    assert "Warning" in output and big_uid in output, "the final response lists the failed sub-operation"
    log = shared_scp.log()
    assert "would decode 2 MB of pixel data, above the limit of 1 MB" in log, log
    assert Instance.objects.filter(sop_instance_uid=big_uid).exists()


def test_a_move_converts_an_image_within_the_default_limit(shared_scp, two_rle_images, plain_storescp):
    study, _ = two_rle_images
    result = qr("movescu", shared_scp, *study_keys(study), options=["-aem", "PLAIN"])
    assert result.returncode == 0, result.stdout + result.stderr
    rows = sorted(pydicom.dcmread(f).Rows for f in received(plain_storescp))
    assert rows == [64, 1024]
