"""WADO-RS metadata read straight from the file's bytes (`rawjson`) is the
very object pydicom's reading gives (`instancejson`), or says `Unusual` and
leaves the file to pydicom — on every file of pydicom's test data, on files
made here for the cases real archives hold (implicit VR with private and
ambiguous tags, icons, character sets, UN of known tags), and on damaged
files."""

import logging
import random
import warnings

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from portal.dicomweb import pixels as px
from portal.dicomweb import rawjson
from portal.dicomweb.instancejson import instance_json


def _uri(tag):
    return f"http://x/bulk/{tag}"


def _by_pydicom(path):
    return instance_json(px.locate(path), _uri)


@pytest.fixture(autouse=True)
def _quiet():
    """pydicom warns about every odd value of its test files."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        yield
        logging.disable(logging.NOTSET)


def _readable_by_pydicom(files):
    for path in files:
        try:
            expected = _by_pydicom(path)
        except Exception:  # noqa: BLE001 - files pydicom itself cannot read are not ours to match
            continue
        yield path, expected


def test_every_pydicom_test_file_gives_the_same_json_or_goes_to_pydicom():
    files = get_testdata_files("*") + get_charset_files("*")
    fast = []
    for path, expected in _readable_by_pydicom(files):
        try:
            ours = rawjson.instance_json(path, _uri)
        except rawjson.Unusual:
            continue
        assert ours == expected, path
        fast.append(path.rsplit("/", 1)[-1])
    # The common files take the fast way (else this test proves nothing).
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "chrH31.dcm", "chrX1.dcm"):
        assert name in fast
    assert len(fast) >= 60, len(fast)


def test_files_that_need_pydicom_are_said_unusual():
    for name, reason in [
        ("MR_small_bigendian.dcm", "transfer syntax"),
        ("image_dfl.dcm", "transfer syntax"),
        ("UN_sequence.dcm", "UN"),
        ("chrSQEncoding.dcm", "character set inside an item"),
    ]:
        path = get_testdata_file(name) or get_charset_files(name)[0]
        with pytest.raises(rawjson.Unusual, match=reason):
            rawjson.instance_json(path, _uri)


def _save(tmp_path, ds, syntax, name):
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return path


def _base():
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    return ds


def _rich(tmp_path, syntax):
    ds = _base()
    ds.PatientName = ["Doe^John^^Dr", "Roe^Jane=ロウ^ジェーン=ろう^じぇーん"]
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PixelSpacing = [" 0.5", "0.488281 "]
    ds.WindowCenter = ["40", "-600"]
    ds.InstanceNumber = "0012"
    ds.ReferencedFrameNumber = ["1", "2", "3"]
    ds.StationName = ""
    ds.StudyDescription = "Head\\Neck? no: one value"
    ds.ImageComments = "line one\\line two  "
    ds.RetrieveAETitle = ["  PACS ", "ARCHIVE"]
    ds.FrameIncrementPointer = [0x00181063, 0x00181065]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 12, 11
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.SmallestImagePixelValue = -5  # US or SS: signed with PixelRepresentation 1
    ds.LargestImagePixelValue = 4000
    ds.PixelPaddingValue = -2000
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.add_new(0x00090010, "LO", "GEMS_IDEN_01")
    ds.add_new(0x00091001, "LO", "ACME SCANNER")  # known to pydicom's private dictionary
    ds.add_new(0x00091027, "SL", 1234567)
    ds.add_new(0x00110010, "LO", "NOBODY KNOWS")
    ds.add_new(0x00111001, "UN", b"\x01\x02\x03\x04")
    ds.add_new(0x00185100, "CS", "HFS")
    ds.add_new(0x00280009, "AT", [0x00181063])
    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.BitsStored, icon.HighBit = 2, 2, 8, 8, 7
    icon.SamplesPerPixel, icon.PhotometricInterpretation, icon.PixelRepresentation = 1, "MONOCHROME2", 0
    icon.PixelData = b"\x00\x10\x20\x30"
    ds.IconImageSequence = [icon]
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = generate_uid()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "113691", "DCM", "IHE ¼ Profile"
    ref.PurposeOfReferenceCodeSequence = [inner]
    ds.ReferencedImageSequence = [ref, Dataset()]
    ds.RedPaletteColorLookupTableData = bytes(range(256)) * 8  # 2 KB of OW: a bulk data URI
    ds.PixelData = bytes(32)
    return _save(tmp_path, ds, syntax, f"rich-{syntax}.dcm")


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_a_rich_header_reads_alike_in_implicit_and_explicit_vr(tmp_path, syntax):
    path = _rich(tmp_path, syntax)
    ours = rawjson.instance_json(path, _uri)
    assert ours == _by_pydicom(path)
    assert ours["00280106"] == {"vr": "SS", "Value": [-5]}
    assert ours["00100010"]["Value"][1]["Ideographic"] == "ロウ^ジェーン"
    assert ours["00280030"]["Value"] == [0.5, 0.488281]
    assert ours["00200013"]["Value"] == [12]
    assert ours["00281201"]["BulkDataURI"] == "http://x/bulk/00281201"
    assert ours["7FE00010"] == {"vr": "OW", "BulkDataURI": "http://x/bulk/7FE00010"}
    assert ours["00880200"]["Value"][0]["7FE00010"]["InlineBinary"] == "ABAgMA=="
    assert ours["00083002"]["Value"] == [syntax]


def test_utf8_and_latin1_text(tmp_path):
    for charset, name in [("ISO_IR 192", "Müller^Zoë=李^小龍"), ("ISO_IR 100", "Müller^Zoë")]:
        ds = _base()
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.InstitutionName = "Hôpital Saint-Éloi"
        path = _save(tmp_path, ds, ExplicitVRLittleEndian, f"{charset}.dcm")
        ours = rawjson.instance_json(path, _uri)
        assert ours == _by_pydicom(path)
        assert ours["00080080"]["Value"] == ["Hôpital Saint-Éloi"]


def test_explicit_un_of_known_tags_is_read_with_the_known_vr(tmp_path):
    """pydicom reads a UN value of a tag it knows with the known VR (its
    `replace_un_with_known_vr`): so do we."""
    ds = _base()
    ds.ProtocolName = "Protocol X"
    ds.Rows = 512
    path = _save(tmp_path, ds, ExplicitVRLittleEndian, "un.dcm")
    data = path.read_bytes()  # pydicom writes the known VR: make them UN by hand
    data = data.replace(b"\x18\x00\x30\x10LO\x0a\x00", b"\x18\x00\x30\x10UN\x00\x00\x0a\x00\x00\x00", 1)
    data = data.replace(b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x10\x00UN\x00\x00\x02\x00\x00\x00", 1)
    path.write_bytes(data)
    assert pydicom.dcmread(path).get_item(0x00181030).VR == "UN"
    ours = rawjson.instance_json(path, _uri)
    assert ours == _by_pydicom(path)
    assert ours["00181030"] == {"vr": "LO", "Value": ["Protocol X"]}
    assert ours["00280010"] == {"vr": "US", "Value": [512]}


def test_damaged_files_raise_unusual_and_nothing_else(tmp_path):
    """Truncated anywhere and with bytes flipped at random: a dict or
    Unusual, never another exception (the caller then asks pydicom)."""
    original = get_testdata_file("CT_small.dcm")
    with open(original, "rb") as f:
        data = f.read()
    rng = random.Random(1303)
    path = tmp_path / "damaged.dcm"
    outcomes = {"dict": 0, "unusual": 0}
    for n in range(600):
        if n % 2:
            damaged = data[: rng.randrange(132, len(data))]
        else:
            damaged = bytearray(data)
            for _ in range(rng.randrange(1, 6)):
                damaged[rng.randrange(132, 4000)] = rng.randrange(256)
            damaged = bytes(damaged)
        path.write_bytes(damaged)
        try:
            assert isinstance(rawjson.instance_json(path, _uri), dict)
            outcomes["dict"] += 1
        except rawjson.Unusual:
            outcomes["unusual"] += 1
    assert outcomes["unusual"] > 100 and outcomes["dict"] > 100, outcomes


def test_a_file_without_pixel_data_is_read_to_its_end(tmp_path):
    ds = _base()
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 16)  # trailing padding after everything
    path = _save(tmp_path, ds, ExplicitVRLittleEndian, "nopixels.dcm")
    ours = rawjson.instance_json(path, _uri)
    assert ours == _by_pydicom(path)
    assert "FFFCFFFC" in ours and "7FE00010" not in ours


def test_the_pixel_data_of_a_compressed_file_is_a_bulk_data_uri():
    path = get_testdata_file("JPEG2000.dcm")
    ours = rawjson.instance_json(path, _uri)
    assert ours["7FE00010"] == {"vr": "OB", "BulkDataURI": "http://x/bulk/7FE00010"}
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ours["00083002"]["Value"][0]
