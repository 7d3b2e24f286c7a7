"""Reading the indexed attributes from a stored file (dicomnodes/header.py)."""

import pydicom
import pytest

from dicomnodes.archive.header import (
    UnreadableDataset,
    normalise_date,
    normalise_time,
    read_header_bytes,
    read_header_file,
)
from dicomnodes.archive.storage import file_meta_bytes
from tests.support.dicomdata import BUNDLED, make_ct

# Bundled pydicom files, one per transfer syntax the header reader must walk.
BUNDLED_CASES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "JPEG2000.dcm",  # encapsulated pixel data
    "MR_small_RLE.dcm",  # encapsulated pixel data
]


def saved_without(path, keyword):
    ds = pydicom.dcmread(path)
    delattr(ds, keyword)
    ds.save_as(path, enforce_file_format=True)
    return path


def saved_with(path, **values):
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", BUNDLED_CASES)
def test_it_reads_the_same_values_as_pydicom(name):
    header = read_header_file(BUNDLED / name)
    ds = pydicom.dcmread(BUNDLED / name)
    assert header.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert header.sop_class_uid == ds.SOPClassUID
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.study_instance_uid == ds.StudyInstanceUID
    assert header.series_instance_uid == ds.SeriesInstanceUID
    assert header.patient_name == str(ds.PatientName)
    assert header.patient_id == ds.PatientID
    assert header.modality == ds.Modality
    expected_number = ds.get("SeriesNumber")
    assert header.series_number == (int(expected_number) if expected_number not in (None, "") else None)


def test_it_reads_a_generated_ct_with_normalised_date_and_time(tmp_path):
    header = read_header_file(make_ct(tmp_path / "ct.dcm", series_number=7, instance_number=3, accession="A42"))
    assert (header.study_date, header.study_time) == ("20261127", "101500")
    assert (header.series_number, header.instance_number) == (7, 3)
    assert header.accession_number == "A42"
    assert header.patient_birth_date == "19700101"


def test_it_reads_the_same_bytes_as_a_file(tmp_path):
    path = make_ct(tmp_path / "ct.dcm")
    assert read_header_bytes(path.read_bytes()) == read_header_file(path)


@pytest.mark.parametrize(
    "charset, name",
    [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 126", "Διονύσιος^Γιώργος")],
    ids=["latin-1", "greek"],
)
def test_a_name_in_a_declared_character_set_is_decoded_to_unicode(tmp_path, charset, name):
    header = read_header_file(make_ct(tmp_path / "ct.dcm", charset=charset, patient_name=name))
    assert header.patient_name == name
    assert header.specific_character_set == charset


def test_a_dataset_without_study_instance_uid_is_unreadable(tmp_path):
    path = saved_without(make_ct(tmp_path / "ct.dcm"), "StudyInstanceUID")
    with pytest.raises(UnreadableDataset, match="no Study Instance UID"):
        read_header_file(path)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_uid_that_is_not_a_uid_is_unreadable(tmp_path):
    path = saved_with(make_ct(tmp_path / "ct.dcm"), SeriesInstanceUID="1.2.abc")
    with pytest.raises(UnreadableDataset, match="Series Instance UID '1.2.abc' is not a valid UID"):
        read_header_file(path)


@pytest.mark.parametrize("garbage", [b"\xff" * 200, b"garbage!" * 50, bytes(range(256))], ids=["ff", "text", "ramp"])
def test_garbage_after_a_valid_file_meta_is_unreadable(garbage):
    meta = file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1")
    with pytest.raises(UnreadableDataset):
        read_header_bytes(meta + garbage)


def test_a_file_that_is_not_dicom_at_all_is_unreadable(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a DICOM file\n" * 20)
    with pytest.raises(UnreadableDataset):
        read_header_file(path)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("20261127", "20261127"),
        ("2026.11.27", "20261127"),
        (" 20261127 ", "20261127"),
        ("garbage", ""),
        ("2026-11-27", ""),
        ("202611", ""),
        ("", ""),
    ],
)
def test_normalise_date_keeps_only_yyyymmdd(raw, expected):
    assert normalise_date(raw) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1015", "101500"),
        ("10", "100000"),
        ("101530", "101530"),
        ("10:15:30.5", "101530.5"),
        ("101530.123456", "101530.123456"),
        # Only the shape is checked, not the ranges: an hour of 25 is kept.
        ("25", "250000"),
        ("101530.1234567", ""),
        ("1pm", ""),
        ("", ""),
    ],
)
def test_normalise_time_pads_to_hhmmss(raw, expected):
    assert normalise_time(raw) == expected


def _dataset_part(path):
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as f:
        read_preamble(f, False)
        meta = _read_file_meta_info(f)
        raw = f.read()
    return meta, raw


def test_the_fast_reader_agrees_with_pydicom_on_every_bundled_file():
    from dicomnodes.archive.fastheader import read_header_fast

    compared = 0
    for path in sorted(BUNDLED.glob("*.dcm")):
        try:
            meta, raw = _dataset_part(path)
            expected = read_header_file(path)
        except Exception:
            continue  # files without file meta, or that pydicom cannot index either
        fast = read_header_fast(
            raw,
            str(meta.get("TransferSyntaxUID", "")),
            sop_class_uid=str(meta.get("MediaStorageSOPClassUID", "")),
            sop_instance_uid=str(meta.get("MediaStorageSOPInstanceUID", "")),
        )
        if fast is not None:
            assert fast == expected, path.name
            compared += 1
    assert compared >= 50


def test_the_fast_reader_declines_big_endian_and_deflate():
    from dicomnodes.archive.fastheader import read_header_fast

    for name in ("MR_small_bigendian.dcm", "image_dfl.dcm"):
        meta, raw = _dataset_part(BUNDLED / name)
        ts = str(meta.TransferSyntaxUID)
        assert read_header_fast(raw, ts, sop_class_uid="1.2", sop_instance_uid="1.2.3") is None


def test_the_fast_reader_skips_nested_undefined_length_sequences(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from dicomnodes.archive.fastheader import read_header_fast

    path = make_ct(tmp_path / "seq.dcm", patient_name="Nested^Seq")
    ds = pydicom.dcmread(path)
    inner = Dataset()
    inner.CodeValue = "123"
    outer = Dataset()
    outer.ConceptNameCodeSequence = Sequence([inner])
    ds.ReferencedStudySequence = Sequence([outer])  # (0008,1110), before the patient module
    ds["ReferencedStudySequence"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    meta, raw = _dataset_part(path)
    fast = read_header_fast(
        raw, str(meta.TransferSyntaxUID), sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID)
    )
    assert fast is not None
    assert fast == read_header_file(path)
    assert fast.patient_name == "Nested^Seq"


def test_the_structure_walk_collects_what_the_fast_reader_walks_for():
    """check_structure(collect=...) hands the header reader the same values
    its own walk finds, on every bundled file both can read."""
    from dicomnodes.archive.fastheader import LAST_TAG, WANTED_TAGS, _walk
    from dicomnodes.archive.structure import (
        EXPLICIT_VR_BIG_ENDIAN,
        IMPLICIT_VR_LITTLE_ENDIAN,
        UnreadableDataset,
        check_structure,
    )

    compared = 0
    for path in sorted(BUNDLED.glob("*.dcm")):
        try:
            meta, raw = _dataset_part(path)
            ts = str(meta.TransferSyntaxUID)
        except Exception:
            continue
        if ts == EXPLICIT_VR_BIG_ENDIAN or ts in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"):
            continue
        try:
            own = _walk(raw, ts == IMPLICIT_VR_LITTLE_ENDIAN)
        except Exception:
            continue  # the fast reader declines it (pydicom reads it)
        try:
            collected = check_structure(raw, ts, collect=WANTED_TAGS, collect_until=LAST_TAG)
        except UnreadableDataset:
            continue
        if collected is None:  # implicit VR sent on an explicit VR context
            assert ts != IMPLICIT_VR_LITTLE_ENDIAN and not bytes(raw[4:6]).isalpha(), path.name
            continue
        assert collected == own, path.name
        compared += 1
    assert compared >= 40


def test_the_structure_walk_collects_nothing_past_the_last_wanted_tag_nor_from_big_endian():
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

    from dicomnodes.archive.structure import check_structure

    def element(group, elem, vr, value):
        return group.to_bytes(2, "little") + elem.to_bytes(2, "little") + vr + len(value).to_bytes(2, "little") + value

    raw = (
        element(0x0010, 0x0010, b"PN", b"Kept^Name ")
        + element(0x0020, 0x0020, b"CS", b"L\\R ")  # (0020,0020): above the last wanted tag
        + element(0x0010, 0x0020, b"LO", b"LATE")  # out of order after it: not read, as the fast reader
    )
    found = check_structure(raw, ExplicitVRLittleEndian, collect={0x00100010, 0x00100020}, collect_until=0x00200013)
    assert found == {0x00100010: b"Kept^Name "}
    assert check_structure(raw, ExplicitVRLittleEndian) is None  # nothing asked
    big = (0x0010).to_bytes(2, "big") + (0x0010).to_bytes(2, "big") + b"PN" + (4).to_bytes(2, "big") + b"A^B "
    assert check_structure(big, ExplicitVRBigEndian, collect={0x00100010}, collect_until=0x00200013) is None


def test_ascii_values_read_as_pydicom_reads_them_in_every_character_set():
    """The fast reader's shortcut for ASCII values without an ISO 2022
    escape gives what PersonName and decode_bytes give, whatever the
    Specific Character Set (30,000 random values over every term)."""
    import random
    import warnings

    from pydicom.charset import TEXT_VR_DELIMS, convert_encodings, decode_bytes, python_encoding
    from pydicom.valuerep import PersonName

    from dicomnodes.archive.fastheader import _decode

    rnd = random.Random(14)
    terms = [*python_encoding, "ISO 2022 IR 6\\ISO 2022 IR 87", "\\ISO 2022 IR 149", "ISO 2022 IR 100\\ISO 2022 IR 87"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(30_000):
            value = bytes(rnd.choice(b"AbZ^= \\\x00~09.'-") for _ in range(rnd.randint(0, 12)))
            term = rnd.choice(terms)
            encodings = convert_encodings([t.strip() for t in term.split("\\")])
            got = _decode({0x00080005: term.encode(), 0x00100010: value, 0x00081030: value})
            name = str(PersonName(value.rstrip(b" \x00"), encodings).decode()).strip(" \x00")
            text = decode_bytes(value, encodings, TEXT_VR_DELIMS).strip(" \x00")
            assert (got["PatientName"], got["StudyDescription"]) == (name, text), (term, value)
