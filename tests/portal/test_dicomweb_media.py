"""WADO's choices without a network: Accept headers as clients send them,
the transfer syntax of an instance, the media type of frames, and frames read
from pydicom's bundled files in every stored form (`media.py`,
`retrieval.py`, `pixels.py`)."""

import pydicom
import pytest
from pydicom.pixels import pixel_array

from portal.dicomweb.instancejson import instance_json, parse_tag
from portal.dicomweb.media import Wanted, parse_accept
from portal.dicomweb.pixels import PixelError, decoded_frame, locate, stored_frame
from portal.dicomweb.retrieval import dicom_syntax, frame_media, parse_frame_list
from tests.support.dicomdata import BUNDLED

ELE, ILE, JPEG = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"
DICOM = Wanted("application/dicom", multipart=True)
OCTETS = Wanted("application/octet-stream", multipart=True)


def test_it_reads_several_ranges_best_q_first_with_type_quoted_or_not():
    wanted = parse_accept(
        'multipart/related; type=application/octet-stream; q=0.5, multipart/related; type="image/jpeg"; '
        "transfer-syntax=1.2.840.10008.1.2.4.50, image/png;q=0",
        default=OCTETS,
    )
    assert wanted == [
        Wanted("image/jpeg", True, JPEG, 1.0),
        Wanted("application/octet-stream", True, None, 0.5),
    ]


def test_an_absent_or_empty_header_means_the_default():
    assert parse_accept(None, default=DICOM) == [DICOM]
    assert parse_accept(" ", default=DICOM) == [DICOM]


def test_multipart_without_a_type_and_star_admit_anything():
    (wanted,) = parse_accept("multipart/related", default=DICOM)
    assert wanted.matches("application/dicom") and wanted.multipart
    assert parse_accept("*/*", default=DICOM)[0].matches("image/jpeg")
    assert not Wanted("image/*").matches("application/octet-stream")


def test_the_stored_syntax_goes_unless_a_range_asks_for_little_endian_only():
    assert dicom_syntax(JPEG, [DICOM]) == JPEG
    assert dicom_syntax(JPEG, [Wanted("application/dicom", True, "*")]) == JPEG
    assert dicom_syntax(JPEG, [Wanted("application/dicom", True, ELE)]) == ELE
    assert dicom_syntax(ELE, [Wanted("application/dicom", True, "1.2.840.10008.1.2.4.90")]) is None


@pytest.mark.parametrize(
    "accept, expected",
    [
        (
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            (True, f"application/octet-stream; transfer-syntax={JPEG}"),
        ),
        ('multipart/related; type="image/jpeg"', (True, f"image/jpeg; transfer-syntax={JPEG}")),
        (
            "multipart/related; type=application/octet-stream",
            (False, f"application/octet-stream; transfer-syntax={ELE}"),
        ),
        ("*/*", (False, f"application/octet-stream; transfer-syntax={ELE}")),
        ("multipart/related; type=image/jp2", None),
    ],
)
def test_a_jpeg_frame_goes_as_stored_only_when_asked_for(accept, expected):
    stored = locate(BUNDLED / "SC_rgb_jpeg_dcmtk.dcm")
    assert frame_media(stored, parse_accept(accept, default=OCTETS)) == expected


def test_native_frames_are_octet_stream_only():
    stored = locate(BUNDLED / "CT_small.dcm")
    assert frame_media(stored, parse_accept("multipart/related; type=image/jpeg", default=OCTETS)) is None
    assert frame_media(stored, [OCTETS]) == (False, f"application/octet-stream; transfer-syntax={ELE}")


def test_frame_lists_are_numbers_from_one():
    assert parse_frame_list("2,1") == [1, 0]
    assert parse_frame_list("0") is None
    assert parse_frame_list("1,x") is None


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_rle_2frame.dcm",
        "JPEG2000.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
    ],
)
def test_each_frame_decodes_to_what_pydicom_decodes_from_the_whole_file(name):
    stored = locate(BUNDLED / name)
    for index in range(stored.frame_count):
        expected = pixel_array(pydicom.dcmread(BUNDLED / name), index=index)
        expected = expected.astype(expected.dtype.newbyteorder("<")).tobytes()
        assert decoded_frame(stored, index, max_decoded_bytes=1 << 30) == expected


def test_a_native_frame_is_read_at_its_offset():
    stored = locate(BUNDLED / "CT_small.dcm")
    assert stored.vr == "OW" and not stored.encapsulated
    with open(stored.path, "rb") as f:
        f.seek(stored.offset)
        assert stored_frame(stored, 0) == f.read(stored.length)
    with pytest.raises(PixelError):
        stored_frame(stored, 1)


def test_metadata_has_bulk_data_uris_and_the_stored_syntax():
    body = instance_json(locate(BUNDLED / "SC_rgb_jpeg_dcmtk.dcm"), lambda tag: f"root/{tag}")
    assert body["7FE00010"] == {"vr": "OB", "BulkDataURI": "root/7FE00010"}
    assert body["00083002"] == {"vr": "UI", "Value": [JPEG]}
    assert list(body) == sorted(body)
    assert parse_tag("7FE00010") == 0x7FE00010
    assert parse_tag("7FE0001") is None and parse_tag("zzzzzzzz") is None
