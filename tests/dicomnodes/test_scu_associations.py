"""What every association we open gets (`scp/outgoing.connect`: transfer
jobs, C-MOVE sub-associations, the Echo button), against a real peer (a
pynetdicom storage SCP)."""

import io
import socket

from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage

from dicomnodes.net import commandset as cs
from dicomnodes.query.selection import Target
from dicomnodes.scp import outgoing
from tests.support.transfer import RecordingScp


def test_nagle_is_off_on_our_associations():
    """With Nagle's algorithm on, every C-STORE of a C-MOVE waits ~40 ms for
    the peer's delayed ACK."""
    recorder = RecordingScp().start()
    try:
        assoc = outgoing.connect(
            "127.0.0.1",
            recorder.port,
            calling_ae="PACS",
            called_ae=recorder.ae_title,
            contexts=[build_context(CTImageStorage)],
            timeout=10,
        )
        try:
            nodelay = assoc.link.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            outgoing.finish(assoc)
    finally:
        recorder.stop()
    assert nodelay == 1
    assert recorder.associations == 1


class _NoAssociation:
    contexts = {}


def test_the_c_store_request_reads_back_as_the_fields_it_was_built_from():
    """The C-STORE-RQ is built from pieces made once per association
    (`Sender._command`): it must be what `commandset.encode` makes of the
    same fields, and read back by pynetdicom as they were given — odd and
    even UID lengths, with and without a Move Originator (C-MOVE)."""
    sop_class = "1.2.840.10008.5.1.4.1.1.2"
    for originator in (None, ("CALLER", 7), ("A_VERY_LONG_AE_TITLE", 65535)):
        sender = outgoing.Sender(_NoAssociation(), budget=2**20, move_originator=originator)
        for uid in ("1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.95947851812588551099063828564450079"):
            command = sender._command(Target(uid, sop_class, "1.2.840.10008.1.2.1"), message_id=300)
            fields = dict(
                CommandField=cs.C_STORE_RQ,
                MessageID=300,
                AffectedSOPClassUID=sop_class,
                Priority=cs.PRIORITY_MEDIUM,
                CommandDataSetType=cs.DATA_SET_PRESENT,
                AffectedSOPInstanceUID=uid,
            )
            if originator is not None:
                fields.update(
                    MoveOriginatorApplicationEntityTitle=originator[0][:16], MoveOriginatorMessageID=originator[1]
                )
            assert command == cs.encode(**fields)
            read = decode_dataset(io.BytesIO(command), True, True)
            assert read.CommandGroupLength == len(command) - 12
            assert (read.CommandField, read.MessageID, read.CommandDataSetType) == (1, 300, cs.DATA_SET_PRESENT)
            assert (read.AffectedSOPClassUID, read.AffectedSOPInstanceUID) == (sop_class, uid)
            if originator is None:
                assert "MoveOriginatorApplicationEntityTitle" not in read
            else:
                assert read.MoveOriginatorApplicationEntityTitle == originator[0][:16]
                assert read.MoveOriginatorMessageID == originator[1]
