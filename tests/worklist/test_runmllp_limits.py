"""What `manage.py runmllp` refuses: senders not allowed, connections past
the cap, messages trickled in, forged control IDs from elsewhere.  Clients:
python-hl7's `mllp_send` and raw sockets (`Client`).

Personas: the RIS (`mllp_send` from 127.0.0.1) and a stranger (raw sockets,
from 127.0.0.2 when it must be another address).
"""

import socket
import time

from tests.support.processes import wait_until
from tests.worklist.test_runmllp import SB, Client, msa, order
from worklist.models import HL7Message, MessageOutcome, WorklistItem, WorklistSettings

STRANGER_ADDRESS = "127.0.0.2"  # any 127/8 address reaches the loopback listener


def closed_by_server(sock, *, trickle, limit):
    """Send one byte every 0.2 s until the server closes the connection;
    seconds it took, or None if it was still open after `limit` seconds.

    A server that closes while our last byte is still unread in its socket
    makes the kernel answer with a reset instead of a FIN, so a reset on
    either call means closed too."""
    sock.settimeout(0.2)
    started = time.monotonic()
    while time.monotonic() - started < limit:
        try:
            if sock.recv(1) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except ConnectionResetError:
            return time.monotonic() - started
        try:
            sock.sendall(trickle)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    return None


def test_a_message_trickled_byte_by_byte_is_cut_off_at_the_message_time_out(start_mllp):
    server = start_mllp(frame_timeout=2, idle_timeout=300)
    client = Client(server.port)
    client.send(SB + b"MSH|")

    took = closed_by_server(client.sock, trickle=b"X", limit=10)

    client.close()
    assert took is not None, "a trickle keeps the connection open"
    assert 1.5 <= took <= 6
    server.wait_for_log("message time-out")


def test_stray_bytes_trickled_outside_a_frame_are_cut_off_too(start_mllp):
    server = start_mllp(frame_timeout=2, idle_timeout=300)
    client = Client(server.port)

    took = closed_by_server(client.sock, trickle=b"?", limit=10)

    client.close()
    assert took is not None and took <= 6


def test_connections_beyond_the_cap_are_closed_at_once_and_logged(start_mllp, tmp_path):
    server = start_mllp(max_connections=2)
    first, second = Client(server.port), Client(server.port)
    assert msa(first.ask(order("ONE")))[0] == "AA"  # both are open and counted
    assert msa(second.ask(order("TWO", n=2)))[0] == "AA"

    third = Client(server.port)
    assert third.sock.recv(1) == b"", "the third connection is closed before anything is read"
    third.close()
    server.wait_for_log("refused: 2 connections open (maximum connections)")

    first.close()

    def ris_is_answered():
        return msa(server.mllp_send(order("THREE", n=3), tmp_dir=tmp_path)) == ("AA", "THREE")

    wait_until(ris_is_answered, 10, message="a free place for the RIS once a connection closed")
    second.close()


def test_a_sender_not_in_the_allowed_senders_gets_ar_and_its_order_is_not_applied(start_mllp, tmp_path):
    server = start_mllp(allowed_senders="192.0.2.0/24")

    output = server.mllp_send(order("REFUSED1"), tmp_dir=tmp_path)

    assert msa(output) == ("AR", "REFUSED1"), output
    assert b"ERR|" in output and b"not an allowed sender" in output
    assert not WorklistItem.objects.exists()
    assert HL7Message.objects.get().outcome == MessageOutcome.REJECTED

    WorklistSettings.objects.filter(pk=1).update(allowed_senders="127.0.0.1\nRIS^HOSPITAL")
    assert msa(server.mllp_send(order("ALLOWED1"), tmp_dir=tmp_path)) == ("AA", "ALLOWED1")
    assert WorklistItem.objects.count() == 1


def test_a_forged_control_id_from_another_address_does_not_swallow_the_ris_order(shared_mllp, tmp_path):
    stranger = Client.__new__(Client)
    stranger.sock = socket.create_connection(("127.0.0.1", shared_mllp.port), 10, (STRANGER_ADDRESS, 0))
    stranger.pending = b""
    # The stranger guesses the RIS's next control ID (MSH-3/MSH-4 are RIS^HOSPITAL too).
    forged = order("NEXT-42", patient_id="EVE", n=9).replace("PLNEXT-42", "PLFORGED").replace("FINEXT-42", "FIFORGED")
    assert msa(stranger.ask(forged)) == ("AA", "NEXT-42")
    stranger.close()

    output = shared_mllp.mllp_send(order("NEXT-42", patient_id="PAT001", n=1), tmp_dir=tmp_path)

    assert msa(output) == ("AA", "NEXT-42")
    assert WorklistItem.objects.filter(patient_id="PAT001").exists(), "the real order is applied"
    rows = list(HL7Message.objects.order_by("pk").values_list("sender_address", "outcome"))
    assert rows == [(STRANGER_ADDRESS, MessageOutcome.APPLIED), ("127.0.0.1", MessageOutcome.APPLIED)]
