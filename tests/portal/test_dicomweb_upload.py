"""The STOW-RS body reader (`portal/dicomweb/upload.py`), without a network:
framing, bounds, and the spool of a large part."""

import io

import pydicom
import pytest

from dicomnodes.archive.spool import SPILL_AT
from portal.dicomweb import upload
from tests.support.dicomdata import make_ct


@pytest.fixture
def instance(tmp_path):
    """(Part 10 bytes, dataset bytes) of a small CT."""
    raw = make_ct(tmp_path / "ct.dcm").read_bytes()
    meta = upload.read_file_meta(raw)
    return raw, raw[meta.offset :]


def parts_of(body, boundary="b", chunk=7, **kwargs):
    """(content type, meta, problem, dataset bytes) of every part, read in
    small chunks so that delimiters straddle them."""
    found = []
    for part in upload.read_parts(io.BytesIO(body), boundary, chunk=chunk, **kwargs):
        try:
            data = b""
            if part.meta is not None and not part.problem:
                with part.dataset() as view:
                    data = bytes(view)
            found.append((part.content_type, part.meta, part.problem, data))
        finally:
            part.close()
    return found


def test_it_reads_parts_with_a_preamble_padding_no_headers_and_an_epilogue(instance):
    raw, dataset = instance
    body = (
        b"ignored preamble\r\n--b  \t\r\nContent-Type: application/dicom\r\n\r\n"
        + raw
        + b"\r\n--b\r\n\r\n"
        + raw
        + b"\r\n--b--\r\nignored epilogue"
    )
    found = parts_of(body)
    assert [(t, p, d) for t, _m, p, d in found] == [("application/dicom", "", dataset)] * 2
    assert found[0][1].transfer_syntax_uid == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_a_part_without_headers_is_read_whatever_the_chunks(instance, chunk):
    raw, dataset = instance
    body = b"--b\r\n\r\n" + raw + b"\r\n--b\r\n\r\n" + raw + b"\r\n--b--"
    assert [(p, d) for _t, _m, p, d in parts_of(body, chunk=chunk)] == [("", dataset)] * 2


@pytest.mark.parametrize("chunk", [*range(1, 30), 61, 1000, 4096])
def test_a_delimiter_across_chunks_and_look_alikes_in_the_content_are_told_apart(instance, chunk):
    raw, dataset = instance
    # Bytes after the dataset that begin like the delimiter (CRLF--boundary7):
    # only the whole delimiter ends a part, wherever the chunks are cut.
    content = raw + b"\r\n--boundary\r\n--boundar\r\n-"
    # Headers and padding too, so that every line of the framing is cut somewhere.
    headers = b" \t\r\nContent-Type: application/dicom\r\nContent-Length: 12345\r\n\r\n"
    body = b"--boundary7" + headers + content + b"\r\n--boundary7" + headers + raw + b"\r\n--boundary7--"
    found = parts_of(body, boundary="boundary7", chunk=chunk)
    assert [(t, p, d) for t, _m, p, d in found] == [
        ("application/dicom", "", content[len(raw) - len(dataset) :]),
        ("application/dicom", "", dataset),
    ]


def test_a_file_meta_group_longer_than_the_first_look_is_read_whole(tmp_path):
    ds = pydicom.dcmread(make_ct(tmp_path / "ct.dcm"))
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"x" * (upload.META_FIRST + 10)
    ds.save_as(tmp_path / "long.dcm", enforce_file_format=True)
    raw = (tmp_path / "long.dcm").read_bytes()
    meta = upload.read_file_meta(raw)
    assert meta.offset > upload.META_FIRST
    assert meta.sop_instance_uid == ds.SOPInstanceUID
    assert pydicom.dcmread(io.BytesIO(raw[meta.offset :]), force=True).SOPInstanceUID == ds.SOPInstanceUID


def test_the_first_boundary_may_open_the_body(instance):
    raw, dataset = instance
    assert [d for *_rest, d in parts_of(b"--b\r\n\r\n" + raw + b"\r\n--b--")] == [dataset]


def test_a_part_that_is_not_part_10_has_a_problem():
    [(_type, meta, problem, _data)] = parts_of(b"--b\r\n\r\nnot dicom at all\r\n--b--")
    assert meta is None and problem.startswith("not a DICOM Part 10 file")


def test_a_body_cut_inside_a_part_yields_it_with_a_problem(instance):
    raw, _dataset = instance
    [(_type, meta, problem, _data)] = parts_of(b"--b\r\n\r\n" + raw[:500])
    assert meta.sop_instance_uid == pydicom.dcmread(io.BytesIO(raw)).SOPInstanceUID
    assert "ends inside this part" in problem


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"no boundary anywhere", "no opening boundary"),
        (b"--b trailing text\r\n\r\n", "text after a boundary"),
        (b"--b\r\nno colon here\r\n\r\nx\r\n--b--", "without a colon"),
    ],
)
def test_broken_framing_is_malformed(body, problem):
    with pytest.raises(upload.MalformedBody, match=problem):
        parts_of(body)


def test_a_body_above_the_bound_is_too_large(instance):
    raw, _dataset = instance
    with pytest.raises(upload.TooLarge):
        parts_of(b"--b\r\n\r\n" + raw + b"\r\n--b--", max_body=len(raw) // 2)


def test_a_part_above_4_mb_goes_to_a_spool_file_holding_the_dataset_only(tmp_path, settings):
    settings.PACS_STORAGE_DIR = tmp_path / "storage"
    ds = pydicom.dcmread(make_ct(tmp_path / "ct.dcm"))
    ds.Rows = ds.Columns = 1600
    ds.PixelData = bytes(range(256)) * (1600 * 1600 * 2 // 256)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    raw = buffer.getvalue()
    assert len(raw) > SPILL_AT

    body = b"--b\r\n\r\n" + raw + b"\r\n--b--"
    [part] = upload.read_parts(io.BytesIO(body), "b")
    try:
        assert part.spool is not None
        with part.dataset() as view:
            assert bytes(view) == raw[part.meta.offset :]
    finally:
        part.close()


def test_a_file_meta_uid_that_is_not_a_uid_is_a_problem(instance):
    raw, _dataset = instance
    uid = upload.read_file_meta(raw).sop_instance_uid.encode()
    at = raw.index(uid)
    bad = raw[:at] + b"1.2.\xe9" + raw[at + 5 :]
    [(_type, meta, problem, _data)] = parts_of(b"--b\r\n\r\n" + bad + b"\r\n--b--")
    assert meta is None and problem.startswith("not a DICOM Part 10 file")
