"""Dataset bytes that DCMTK will not send: malformed on purpose, deflate
bombs, and a pynetdicom association that sends them as they are.

pynetdicom's chunked mode sends a file's dataset bytes without parsing them
(`send_raw`), so the bytes on the wire are exactly these.
"""

import io
import struct
import zlib
from contextlib import contextmanager

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE, _config

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def identifying(*, sop_instance_uid=None, implicit=False, **extra) -> tuple[str, bytes]:
    """(SOP Instance UID, the bytes of a small well-formed dataset)."""
    ds = Dataset()
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.PatientID = "RAW1"
    ds.PatientName = "Raw^Bytes"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    out.is_little_endian = True
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return str(ds.SOPInstanceUID), out.getvalue()


def explicit_element(group, element, vr, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OD", b"OF", b"OL", b"OV", b"SV", b"UV"):
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def nested_sequences(depth: int, *, closed=True) -> bytes:
    """(0040,A730) Content Sequence nested `depth` deep, undefined lengths."""
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    opening = sequence + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + (closing * depth if closed else b"")


def deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def deflate_bomb(head: bytes, inflated_size: int) -> bytes:
    """`head` then `inflated_size` zero bytes, deflated: 1 MiB of zeros
    compresses to about a kilobyte, repeated after full flushes (each block
    stands alone), so 8 GiB take about 8 MB and no time to make."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    mib = c.compress(b"\x00" * 2**20) + c.flush(zlib.Z_FULL_FLUSH)
    return first + mib * (inflated_size // 2**20) + c.flush(zlib.Z_FINISH)


def as_file(path, sop_instance_uid, dataset_bytes, transfer_syntax=EXPLICIT, sop_class_uid=SECONDARY_CAPTURE):
    """A Part 10 file whose dataset is `dataset_bytes`, byte for byte."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    write_file_meta_info(buf, meta)
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM" + buf.getvalue())
        out.write(dataset_bytes)
    return path


@contextmanager
def raw_association(port, *, transfer_syntaxes=(EXPLICIT,), calling="MODALITY1", called="PACS"):
    """An association whose `send_c_store(path)` sends the file's dataset
    bytes as they are."""
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(SECONDARY_CAPTURE, list(transfer_syntaxes))
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    try:
        assert assoc.is_established, "runscp accepts the association"
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = saved
