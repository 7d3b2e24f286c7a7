"""net.outbox: messages queued and sent several per sendmsg are the same
PDUs, in the same order, as messages sent one by one; a full queue goes at
once; the debug log keeps one line per PDU."""

import logging
import socket

import pytest

from dicomnodes.net import commandset as cs
from dicomnodes.net.association import Association, Link
from dicomnodes.net.outbox import Outbox

FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _association(sock, max_pdu, debug=False):
    link = Link(sock, timeout=5, max_read=2**20, debug=debug)
    return Association(link, contexts={}, peer_max_pdu=max_pdu, open_sink=lambda *args: None)


def _received(sock):
    sock.settimeout(5)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _messages():
    """Three pending C-FIND responses with identifiers of 0, 5 and 9000 bytes, then the final one."""
    template = cs.response_template(cs.C_FIND_RSP, FIND)
    rsp = template.render(7, 0xFF00, data_set_follows=True)
    pending = [(rsp, bytes(i % 256 for i in range(n))) for n in (0, 5, 9000)]
    return pending, template.render(7, 0x0000)


@pytest.mark.parametrize("max_pdu", [0, 4096, 16384])
def test_queued_messages_are_the_pdus_sent_one_by_one(max_pdu):
    pending, final = _messages()
    one_by_one, theirs = socket.socketpair()
    assoc = _association(one_by_one, max_pdu)
    for rsp, data in pending:
        assoc.send_command(1, rsp)
        assoc.send_data(1, data)
    assoc.send_command(1, final)
    one_by_one.close()
    expected = _received(theirs)

    queued, ours = socket.socketpair()
    assoc = _association(queued, max_pdu)
    outbox = Outbox(assoc)
    sent = [outbox.add(1, rsp, data) for rsp, data in pending]
    outbox.add(1, final)
    outbox.flush()
    queued.close()
    assert sent == [False, False, False]
    assert _received(ours) == expected
    assert len(expected) > 9000


def test_a_full_outbox_sends_at_once():
    pending, _ = _messages()
    sender, receiver = socket.socketpair()
    outbox = Outbox(_association(sender, 16384), max_messages=2)
    assert outbox.add(1, *pending[0]) is False
    receiver.setblocking(False)
    with pytest.raises(BlockingIOError):
        receiver.recv(1)  # nothing sent yet
    assert outbox.add(1, *pending[1]) is True
    receiver.setblocking(True)
    assert len(receiver.recv(65536)) == sum(len(r) + len(d) + 24 for r, d in pending[:2])
    sender.close()
    receiver.close()


def test_with_the_debug_log_every_pdu_is_sent_and_logged_on_its_own(caplog):
    pending, _ = _messages()
    sender, receiver = socket.socketpair()
    outbox = Outbox(_association(sender, 4096, debug=True))
    with caplog.at_level(logging.DEBUG, logger="dicomnodes.net"):
        assert outbox.add(1, *pending[2]) is True
    sender.close()
    received = _received(receiver)
    pdus = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sent P-DATA-TF")]
    assert len(pdus) == 1 + 3  # the command, and 9000 bytes in PDUs of at most 4090
    assert any("DIMSE sent on context 1" in r.getMessage() for r in caplog.records)
    assert len(received) == len(pending[2][0]) + 9000 + 4 * 12
