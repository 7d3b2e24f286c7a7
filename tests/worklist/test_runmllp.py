"""`manage.py runmllp`: the HL7 (MLLP) listener, with python-hl7's `mllp_send`
and raw sockets as the clients.

Personas: the RIS (a well-behaved order sender using `mllp_send`) and a
stranger (a port scanner, a broken interface engine) sending bytes that are
not MLLP.
"""

import random
import re
import socket
import threading
import time
from io import StringIO

from django.core.management import call_command

from tests.support.processes import free_port, port_accepts, wait_until
from worklist.models import WorklistSettings

SB, EB, CR = b"\x0b", b"\x1c", b"\r"


def segment(name, fields):
    """One HL7 segment from {field number: value}."""
    last = max(fields)
    return name + "|" + "|".join(fields.get(n, "") for n in range(1, last + 1))


def order(control_id, *, patient_id="PAT001", name="DOE^JOHN", n=1):
    """A new-order ORM^O01 (HL7 2.3) from the RIS, segments separated by \\r."""
    placer, filler, start = f"PL{control_id}"[:22], f"FI{control_id}"[:22], "20240502090000"
    segments = [
        f"MSH|^~\\&|RIS|HOSPITAL|PACS|RADIOLOGY|20240501103000||ORM^O01|{control_id}|P|2.3||||||8859/1",
        segment("PID", {1: "1", 3: f"{patient_id}^^^HOSP", 5: name, 7: "19700101", 8: "M"}),
        segment("PV1", {1: "1", 2: "O", 8: "D100^REFERRING^DOC"}),
        segment("ORC", {1: "NW", 2: placer, 3: filler, 5: "SC", 7: f"^^^{start}^^R", 9: "20240501103000", 18: "CT01"}),
        segment(
            "OBR",
            {
                1: "1",
                2: placer,
                3: filler,
                4: "CTHEAD^CT HEAD^LOCAL",
                16: "D200^ORDERING^DOC",
                18: f"A{n:07d}",
                19: f"RP{n}",
                20: f"SPS{n}",
                24: "CT",
                27: f"^^^{start}^^R",
            },
        ),
    ]
    return "\r".join(segments) + "\r"


def frame(message):
    data = message.encode("latin-1") if isinstance(message, str) else message
    return SB + data + EB + CR


def msa(ack: bytes):
    """(code, control id) of an ACK's MSA segment, or None."""
    found = re.search(rb"MSA\|([A-Z]{2})\|([^|\r]*)", ack)
    return (found[1].decode("latin-1"), found[2].decode("latin-1")) if found else None


class Client:
    """A raw MLLP connection: send any bytes, read framed answers."""

    def __init__(self, port, host="127.0.0.1", timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    def send(self, data):
        self.sock.sendall(data)

    def read_answer(self):
        """The next framed answer (without its envelope); b'' on EOF."""
        while EB not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                return b""
            self.pending += chunk
        answer, self.pending = self.pending.split(EB, 1)
        self.pending = self.pending.removeprefix(CR)
        return answer.removeprefix(SB)

    def ask(self, message):
        self.send(frame(message))
        return self.read_answer()

    def close(self):
        self.sock.close()


def test_it_acknowledges_an_order_sent_with_mllp_send(shared_mllp, tmp_path):
    output = shared_mllp.mllp_send(order("MSG0001"), tmp_dir=tmp_path)
    assert msa(output) == ("AA", "MSG0001"), output
    assert output.startswith(SB + b"MSH|") and output.rstrip(b"\n").endswith(EB + CR)


def test_it_answers_several_messages_on_one_connection_in_order(shared_mllp, tmp_path):
    output = shared_mllp.mllp_send(*(order(f"MSG{n}", n=n) for n in range(1, 4)), tmp_dir=tmp_path)
    answers = [msa(part) for part in output.split(EB) if msa(part)]
    assert [control_id for _, control_id in answers] == ["MSG1", "MSG2", "MSG3"]
    shared_mllp.wait_for_log("(3 messages)")


def test_it_serves_two_connections_at_once(shared_mllp):
    first, second = Client(shared_mllp.port), Client(shared_mllp.port)
    try:
        data = frame(order("SLOW1"))
        first.send(data[:40])  # `first` is in the middle of a message ...
        assert msa(second.ask(order("FAST1", n=2)))[1] == "FAST1"  # ... and `second` is answered
        first.send(data[40:])
        assert msa(first.read_answer())[1] == "SLOW1"
    finally:
        first.close()
        second.close()


def test_a_message_split_across_two_writes_with_a_pause_is_answered(shared_mllp):
    client = Client(shared_mllp.port)
    data = frame(order("SPLIT1"))
    client.send(data[: len(data) // 2])
    time.sleep(0.5)
    client.send(data[len(data) // 2 :])
    assert msa(client.read_answer())[1] == "SPLIT1"
    client.close()


def test_garbage_before_the_start_block_is_skipped_logged_and_not_echoed(shared_mllp):
    client = Client(shared_mllp.port)
    local_port = client.sock.getsockname()[1]
    client.send(b"NOTMLLP-PATIENT-SMITH\r\n" + frame(order("AFTERJUNK")))
    assert msa(client.read_answer())[1] == "AFTERJUNK"
    client.close()
    shared_mllp.wait_for_log(f"127.0.0.1:{local_port}: skipped 23 bytes outside an MLLP frame")
    assert "PATIENT-SMITH" not in shared_mllp.log()


def test_a_missing_carriage_return_after_the_end_block_is_tolerated(shared_mllp):
    client = Client(shared_mllp.port)
    client.send(SB + order("NOCR1").encode() + EB)
    assert msa(client.read_answer())[1] == "NOCR1"
    client.send(SB + order("NOCR2", n=2).encode() + EB)
    assert msa(client.read_answer())[1] == "NOCR2"
    client.close()
    assert "outside an MLLP frame" not in shared_mllp.log()


def test_an_oversize_frame_is_dropped_and_the_next_message_answered(start_mllp):
    server = start_mllp(max_message_size=2048)
    client = Client(server.port)
    client.send(frame(order("TOOBIG") + "NTE|1||" + "X" * 5000 + "\r"))
    assert msa(client.ask(order("SMALL1")))[1] == "SMALL1"  # the first answer is for the small one
    client.close()
    server.wait_for_log("dropped 1 frame(s) larger than 2048 bytes")


def test_an_idle_connection_is_closed_after_the_idle_timeout(start_mllp):
    server = start_mllp(idle_timeout=2)
    client = Client(server.port)
    assert msa(client.ask(order("BEFOREIDLE")))[1] == "BEFOREIDLE"
    started = time.monotonic()
    assert client.sock.recv(1) == b"", "the server closes the connection"
    assert 1.5 <= time.monotonic() - started <= 6
    client.close()
    server.wait_for_log("idle for 2 s")


def test_a_port_change_in_the_settings_is_applied_without_restart(mllp, tmp_path):
    new_port = free_port()
    row = WorklistSettings.load()
    row.hl7_port = new_port
    row.save()
    mllp.wait_for_log(f"listening on port {new_port}")
    assert msa(mllp.mllp_send(order("NEWPORT"), port=new_port, tmp_dir=tmp_path))[1] == "NEWPORT"
    assert not port_accepts(mllp.port)


def test_port_zero_disables_the_listener_until_a_port_is_set(start_mllp):
    server = start_mllp(port=0, hl7_port=0)
    server.wait_for_log("worklist server disabled (port 0")
    assert server.proc.poll() is None, "runmllp keeps running while disabled"
    port = free_port()
    row = WorklistSettings.load()
    row.hl7_port = port
    row.save()
    server.wait_for_log(f"listening on port {port}")
    client = Client(port)
    assert msa(client.ask(order("ENABLED")))[1] == "ENABLED"
    client.close()


def test_the_port_option_overrides_the_stored_port_for_one_run(start_mllp):
    stored = free_port()
    override = free_port()
    server = start_mllp(port=override, hl7_port=stored, args=["--port", str(override)])
    client = Client(override)
    assert msa(client.ask(order("OVERRIDE")))[1] == "OVERRIDE"
    client.close()
    assert not port_accepts(stored)
    assert WorklistSettings.load().hl7_port == stored, "the override is not saved"
    assert server.proc.poll() is None


def test_it_listens_on_ipv6_too(shared_mllp):
    client = Client(shared_mllp.port, host="::1")
    assert msa(client.ask(order("IPV6")))[1] == "IPV6"
    client.close()
    shared_mllp.wait_for_log("HL7 connection from [::1]:")


def test_a_port_held_by_another_program_is_reported_and_retried(start_mllp):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        port = held.getsockname()[1]
        server = start_mllp(port=port, hl7_port=port, wait=False)
        server.wait_for_log(f"cannot listen on port {port}")
    server.wait_for_log(f"listening on port {port}")
    client = Client(port)
    assert msa(client.ask(order("RETRIED")))[1] == "RETRIED"
    client.close()


def test_checkports_lists_the_hl7_port_from_the_worklist_settings(db):
    row = WorklistSettings.load()
    row.hl7_port = 0
    row.save()
    out = StringIO()
    call_command("checkports", stdout=out)
    (line,) = [line for line in out.getvalue().splitlines() if "HL7 (runmllp)" in line]
    assert "port 0" in line and "DISABLED" in line
    assert "admin: worklist server settings" in line


def test_sigterm_stops_it_with_a_one_line_summary(mllp, tmp_path):
    mllp.mllp_send(order("LAST1"), tmp_dir=tmp_path)
    idle = Client(mllp.port)  # an open, idle connection must not hold it up
    wait_until(lambda: mllp.log().count("HL7 connection from") >= 2, 10, message="the idle connection accepted")
    started = time.monotonic()
    assert mllp.stop() == 0, mllp.log()
    assert time.monotonic() - started < 5
    idle.close()
    assert re.search(r"runmllp \(pid \d+\) stopped: 2 connections, 1 messages, 1 ACKs", mllp.log()), mllp.log()
    assert not port_accepts(mllp.port)


# --- fuzz -------------------------------------------------------------------

FUZZ_MAX_SIZE = 4096


def malformed(rng, n):
    """One malformed frame or message (bytes on the wire), of a random kind."""
    valid = order(f"BAD{n}", n=100_000 + n).encode("latin-1")
    # Framing faults (kinds 0-3) weigh triple: they are this listener's
    # business; the ones that reach the handler are test_hl7in's.
    kind = rng.choices(range(12), weights=[3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1])[0]
    if kind == 0:  # truncated: a frame that never ends
        return SB + valid[: rng.randrange(len(valid))]
    if kind == 1:  # no start block
        return valid + EB + CR
    if kind == 2:  # random bytes, markers included
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 3:  # oversize
        return SB + valid + b"NTE|1||" + b"Y" * rng.randrange(FUZZ_MAX_SIZE, 3 * FUZZ_MAX_SIZE) + EB + CR
    if kind == 4:  # wrong encoding: says UTF-8, is not; or UTF-16
        if rng.random() < 0.5:
            return frame(valid.replace(b"8859/1", b"UNICODE UTF-8").replace(b"DOE^JOHN", b"D\xc3\x28\xff^J\xe9"))
        return frame(valid.decode("latin-1").encode("utf-16"))
    if kind == 5:  # a stray 0x1C in the middle
        cut = rng.randrange(1, len(valid))
        return SB + valid[:cut] + EB + valid[cut:] + EB + CR
    if kind == 6:  # NULs
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 20)):
            data.insert(rng.randrange(len(data)), 0)
        return frame(bytes(data))
    if kind == 7:  # framed garbage without markers
        return frame(bytes(rng.choice(b"\x00\x01\x7f\x80\xffMSH|^~\\&\r\n ") for _ in range(rng.randrange(0, 200))))
    if kind == 8:  # a cut message in a good frame
        return frame(valid[: rng.randrange(1, len(valid))])
    if kind == 9:  # not an order: an unknown type, an odd version, no MSH
        choice = rng.randrange(3)
        if choice == 0:
            return frame(valid.replace(b"ORM^O01", b"ZZZ^Z99"))
        if choice == 1:
            return frame(valid.replace(b"|P|2.3|", b"|P|9.9|"))
        return frame(valid.split(b"\r", 1)[1])
    if kind == 10:  # empty or whitespace frames, doubled markers
        return rng.choice([SB + EB + CR, SB + b"\r\n" + EB + CR, SB + SB + EB + EB + CR + CR, EB + CR])
    return frame(valid.replace(b"|", b"^", rng.randrange(1, 4)))  # 11: a damaged MSH


def test_a_thousand_malformed_frames_do_not_stop_valid_messages(start_mllp):
    """1. Three connections each send 340 malformed items with a valid order
    after every 12th, in chunks of random size.
    2. A reader per connection collects the answers.
    3. Every valid order is answered, in order, and the listener lives on."""
    server = start_mllp(max_message_size=FUZZ_MAX_SIZE)
    rng = random.Random(20240501)
    streams = []
    count = 0
    for c in range(3):
        data, valid_ids = bytearray(), []
        for i in range(340):
            data += malformed(rng, count)
            count += 1
            if i % 12 == 11:
                control_id = f"OK{c}-{i}"
                valid_ids.append(control_id)
                data += frame(order(control_id, n=c * 1000 + i))
        streams.append((bytes(data), valid_ids))
    assert count >= 1000

    def converse(data, answers):
        client = Client(server.port, timeout=60)
        reader = threading.Thread(target=lambda: _read_all(client, answers), daemon=True)
        reader.start()
        chunk_rng = random.Random(len(data))
        i = 0
        while i < len(data):
            step = chunk_rng.randrange(1, 3000)
            client.send(data[i : i + step])
            i += step
        client.send(frame(order(f"END{len(data)}")))
        reader.join(60)
        client.close()

    results = [[] for _ in streams]
    threads = [threading.Thread(target=converse, args=(data, results[k])) for k, (data, _) in enumerate(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)

    for (data, valid_ids), answers in zip(streams, results):
        answered = [a[1] for a in map(msa, answers) if a]
        in_order = [control_id for control_id in answered if control_id in set(valid_ids)]
        assert in_order == valid_ids, f"{len(set(valid_ids) - set(answered))} valid orders were not answered"
    assert server.proc.poll() is None, server.log()
    client = Client(server.port)
    assert msa(client.ask(order("STILLALIVE")))[1] == "STILLALIVE"
    client.close()
    log = server.log()
    assert "skipped" in log and "larger than" in log and "with no end" in log
    assert "handler failed" not in log and not re.search(r"HL7 connection from \S+ failed", log)


def _read_all(client, answers):
    """Collect answers until the final END message is acknowledged."""
    while True:
        answer = client.read_answer()
        if not answer:
            return
        answers.append(answer)
        found = msa(answer)
        if found and found[1].startswith("END"):
            return
