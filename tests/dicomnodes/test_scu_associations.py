"""What every association we open gets (`scp/outgoing.connect`: transfer
jobs, C-MOVE sub-associations, the Echo button), against a real peer (a
pynetdicom storage SCP)."""

import socket

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage

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
