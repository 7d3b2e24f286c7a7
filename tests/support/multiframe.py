"""Multi-frame images for the preview and conversion tests, written frame by
frame so that a 1 GiB file never sits whole in the test process."""

import io
import struct
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid


def multiframe_header(*, rows, columns, frames, bits=16, study_uid=None, series_number=1, **elements) -> Dataset:
    """A CT dataset of `frames` grey frames (no pixel data yet)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20261127"
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MF1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.NumberOfFrames = frames
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def write_native(dest: Path, ds: Dataset, frame_bytes) -> Path:
    """`ds` with uncompressed Pixel Data made of the byte strings
    `frame_bytes` (an iterable, one per frame), streamed to `dest`."""
    head = io.BytesIO()
    ds.save_as(head, enforce_file_format=True)
    total = sum(len(f) for f in frame_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        out.write(head.getvalue())
        vr = b"OW" if int(ds.BitsAllocated) > 8 else b"OB"
        # (7FE0,0010) Pixel Data, explicit VR little endian: tag, VR, 2 reserved bytes, 32-bit length.
        out.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, vr, 0, total + total % 2))
        for frame in frame_bytes:
            out.write(frame)
        if total % 2:
            out.write(b"\0")
    return dest


class RepeatedFrames:
    """`count` frames, all `frame` except the middle one (`middle`)."""

    def __init__(self, frame: bytes, count: int, middle: bytes | None = None):
        self.frame, self.count, self.middle = frame, count, middle if middle is not None else frame

    def __len__(self):
        return self.count

    def __iter__(self):
        for i in range(self.count):
            yield self.middle if i == self.count // 2 else self.frame


def rle_frame(array: np.ndarray, *, bits=16) -> bytes:
    """One grey frame encoded as RLE Lossless."""
    rows, columns = array.shape
    return RLELosslessEncoder.encode(
        array,
        rows=rows,
        columns=columns,
        samples_per_pixel=1,
        number_of_frames=1,
        bits_allocated=bits,
        bits_stored=bits,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
    )


def write_rle(dest: Path, ds: Dataset, frames) -> Path:
    """`ds` with RLE Lossless Pixel Data, one fragment per encoded frame."""
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate(list(frames))
    ds["PixelData"].VR = "OB"
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest
