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


# --- PDUs on a raw socket (PS3.8 9.3): a peer that frames as it likes --------------


class RawPduAssociation:
    """An association negotiated with our own `negotiation.request` over a
    plain socket, whose data phase the test writes PDU by PDU.

    `context_id(sop_class)`: the accepted context of a SOP class; `send()`
    raw bytes; `read_message()` one DIMSE message as (command set, data)."""

    def __init__(self, sock, accepted):
        from dicomnodes.net.association import Link

        self.sock = sock
        self.accepted = accepted
        self.link = Link(sock, timeout=30, max_read=2**24)

    def context_id(self, sop_class):
        return next(cx.id for cx in self.accepted.contexts.values() if cx.abstract_syntax == sop_class)

    def send(self, *chunks):
        self.sock.sendall(b"".join(chunks))

    def read_pdu(self):
        pdu_type, body = self.link.read_pdu()
        return pdu_type, bytes(body)

    def read_message(self):
        """(CommandSet, data bytes or None) of the next message; AssertionError on anything but P-DATA-TF."""
        from dicomnodes.net.commandset import decode
        from dicomnodes.net.pdata import P_DATA_TF, iter_pdvs

        command, data = bytearray(), bytearray()
        decoded = None
        while True:
            pdu_type, body = self.read_pdu()
            assert pdu_type == P_DATA_TF, f"PDU type 0x{pdu_type:02X} where a message was expected: {body[:16]!r}"
            for pdv in iter_pdvs(body):
                (command if pdv.is_command else data).extend(pdv.fragment)
                if pdv.is_command and pdv.is_last:
                    decoded = decode(bytes(command))
                    if not decoded.has_data_set():
                        return decoded, None
                elif not pdv.is_command and pdv.is_last:
                    return decoded, bytes(data)


@contextmanager
def raw_pdu_association(port, sop_classes, *, transfer_syntax=EXPLICIT, calling="MODALITY1", called="PACS"):
    """A RawPduAssociation proposing `sop_classes` in `transfer_syntax`; closed after the block."""
    import socket

    from pynetdicom.presentation import build_context

    from dicomnodes.net import negotiation
    from dicomnodes.net.pdata import A_ASSOCIATE_AC

    contexts = [build_context(uid, [transfer_syntax]) for uid in sop_classes]
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.sendall(
            negotiation.request(
                calling_ae=calling,
                called_ae=called,
                contexts=contexts,
                max_pdu_received=0,
                implementation_class_uid="1.2.826.0.1.3680043.9.7433.99",
                implementation_version_name="RAWPDU",
            )
        )
        raw = RawPduAssociation(sock, None)
        pdu_type, body = raw.read_pdu()
        assert pdu_type == A_ASSOCIATE_AC, f"runscp answered PDU type 0x{pdu_type:02X}"
        raw.accepted = negotiation.decode_accept(body, requested=contexts)
        yield raw
    finally:
        sock.close()


class PduRecord:
    """The PDUs a relay saw: (type, length) in each direction."""

    def __init__(self):
        self.to_target, self.from_target = [], []

    def pdata_lengths(self, direction):
        return [length for pdu_type, length in getattr(self, direction) if pdu_type == 0x04]


def _relay(source, dest, seen):
    """Copy `source` to `dest`, appending each PDU's (type, length) to `seen`."""
    header, body_left = b"", 0
    try:
        while chunk := source.recv(65536):
            view = memoryview(chunk)  # recorded before it is passed on: seen once it arrived
            while len(view):
                if body_left:
                    step = min(body_left, len(view))
                    body_left -= step
                    view = view[step:]
                    continue
                need = 6 - len(header)
                header += bytes(view[:need])
                view = view[need:]
                if len(header) == 6:
                    pdu_type, length = struct.unpack(">BxL", header)
                    seen.append((pdu_type, length))
                    header, body_left = b"", length
            dest.sendall(chunk)
    except OSError:
        pass
    finally:
        for sock, how in ((dest, 1), (source, 0)):  # 1: SHUT_WR, 0: SHUT_RD
            try:
                sock.shutdown(how)
            except OSError:
                pass


@contextmanager
def pdu_recording_relay(target_port):
    """A TCP relay on a free port to 127.0.0.1:`target_port` that records
    the PDU headers going each way: yields (port, PduRecord)."""
    import socket
    import threading

    record = PduRecord()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    open_sockets = [listener]

    def serve():
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            open_sockets.extend((client, upstream))
            threading.Thread(target=_relay, args=(client, upstream, record.to_target), daemon=True).start()
            threading.Thread(target=_relay, args=(upstream, client, record.from_target), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port, record
    finally:
        for s in open_sockets:
            s.close()
