"""Test data: pydicom's bundled files (with fresh UIDs) and generated CT images."""

import shutil
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"

# One bundled file per transfer syntax, with the storescu option that sends
# it in that syntax (see PEERS.md).
TRANSFER_SYNTAX_CASES = [
    ("CT_small.dcm", "1.2.840.10008.1.2.1", []),  # explicit VR little endian
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2", ["-xi"]),  # implicit VR little endian
    ("MR_small_bigendian.dcm", "1.2.840.10008.1.2.2", ["-xb"]),  # explicit VR big endian
    ("image_dfl.dcm", "1.2.840.10008.1.2.1.99", ["-xd"]),  # deflated
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", ["-xy"]),  # JPEG baseline
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51", ["-xx"]),  # JPEG extended
    ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70", ["-xs"]),  # JPEG lossless SV1
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", ["-xt"]),  # JPEG-LS lossless
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", ["-xv"]),  # JPEG 2000 lossless
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", ["-xw"]),  # JPEG 2000
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", ["-xr"]),  # RLE lossless
]


def fresh_copy(name, dest: Path, **overrides) -> Path:
    """A bundled file with new SOP/Study/Series UIDs (several bundled files
    share UIDs), in its own transfer syntax."""
    ds = pydicom.dcmread(BUNDLED / name)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = overrides.pop("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = overrides.pop("SeriesInstanceUID", generate_uid())
    for keyword, value in overrides.items():
        setattr(ds, keyword, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def make_ct(
    dest: Path,
    *,
    patient_id="PAT001",
    patient_name="Doe^Jane",
    study_uid=None,
    series_uid=None,
    sop_uid=None,
    series_number=1,
    instance_number=1,
    study_date="20261127",
    accession="ACC001",
    size=64,
    charset=None,
) -> Path:
    """A small but complete CT image (16-bit, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = "CT"
    ds.StudyDescription = "CT CHEST"
    ds.SeriesDescription = f"SERIES {series_number}"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0, 0, instance_number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = bytes((i * 7 + instance_number) % 256 for i in range(size * size * 2))
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def make_ct_series(folder: Path, count, **kwargs):
    """`count` CT images of one series (one study) in `folder`."""
    study_uid = kwargs.pop("study_uid", None) or generate_uid()
    series_uid = kwargs.pop("series_uid", None) or generate_uid()
    return [
        make_ct(folder / f"ct{i:04d}.dcm", study_uid=study_uid, series_uid=series_uid, instance_number=i + 1, **kwargs)
        for i in range(count)
    ]


def copy_into(paths, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        shutil.copy(p, folder / p.name)
    return folder
