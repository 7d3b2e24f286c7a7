"""What every association we open gets (dicomnodes/sockets.py), against a
real peer (a pynetdicom storage SCP)."""

import socket
import time

from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage

from dicomnodes.scp.compat import NODELAY_HANDLERS
from tests.support.transfer import RecordingScp


def associate(recorder):
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", recorder.port, ae_title=recorder.ae_title, evt_handlers=NODELAY_HANDLERS)
    assert assoc.is_established
    return assoc


def test_a_response_waiting_on_the_queue_is_left_for_the_caller():
    """pynetdicom issue #875: the association's own thread must not take
    (and drop as "unexpected") a response its caller is about to read."""
    recorder = RecordingScp().start()
    try:
        assoc = associate(recorder)
        response = C_STORE()
        response.MessageIDBeingRespondedTo = 1
        response.Status = 0x0000
        assoc.dimse.msg_queue.put((1, response))
        time.sleep(0.1)  # the association thread polls the queue every millisecond
        assert assoc.dimse.msg_queue.qsize() == 1
        assert assoc.dimse.get_msg(block=True) == (1, response)
        assoc.release()
    finally:
        recorder.stop()


def test_nagle_is_off_on_our_associations():
    recorder = RecordingScp().start()
    seen = {}
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)

        def look(event):
            sock = event.assoc.dul.socket.socket
            seen["nodelay"] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        assoc = ae.associate(
            "127.0.0.1",
            recorder.port,
            ae_title=recorder.ae_title,
            evt_handlers=[*NODELAY_HANDLERS, (evt.EVT_ESTABLISHED, look)],
        )
        assert assoc.is_established
        assoc.release()
    finally:
        recorder.stop()
    assert seen["nodelay"] == 1
