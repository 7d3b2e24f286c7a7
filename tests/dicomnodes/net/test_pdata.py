"""P-DATA-TF framing and message reassembly (dicomnodes/net/pdata.py),
checked against pynetdicom's PDUs, with every malformed case refused."""

import random
import struct
import tracemalloc
from io import BytesIO

import pytest
from pynetdicom import dimse_messages, pdu
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode as pynetdicom_decode
from pynetdicom.dsutils import encode as pynetdicom_encode

from dicomnodes.net import UNRECOGNIZED_PDU, ProtocolError, pdata
from dicomnodes.net.commandset import C_ECHO_RQ, C_STORE_RQ, decode, encode
from dicomnodes.net.pdata import PDV, MessageAssembler, PDUReader, iter_pdvs, read_pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.77"
KIB, MIB = 1024, 1024 * 1024
# Our receive bound in these tests: above any PDU the peers below send.
BOUND = 2 * MIB
DATA = random.Random(1).randbytes(300 * KIB)  # a 300 KB data set: many PDUs at 4 and 16 KB


def store_request(data=DATA, message_id=7):
    made = C_STORE()
    made.MessageID = message_id
    made.AffectedSOPClassUID = CT
    made.AffectedSOPInstanceUID = INSTANCE
    made.Priority = 0
    made.DataSet = BytesIO(data)
    return made


def pynetdicom_pdus(message_class, primitive, max_pdu, context_id=1) -> list[bytes]:
    """The P-DATA-TF PDUs pynetdicom sends for `primitive`."""
    message = message_class()
    message.primitive_to_message(primitive)
    return [pdu.P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu)]


def pynetdicom_pdvs(message_class, primitive, max_pdu, context_id=1) -> list[bytes]:
    """pynetdicom's PDV items (length, context ID, control, fragment)."""
    message = message_class()
    message.primitive_to_message(primitive)
    return [
        struct.pack(">LB", len(value) + 1, context) + value
        for p in message.encode_msg(context_id, max_pdu)
        for context, value in p.presentation_data_value_list
    ]


def one_pdu(items: list[bytes]) -> bytes:
    body = b"".join(items)
    return struct.pack(">BxL", pdata.P_DATA_TF, len(body)) + body


def recv_exactly_from(stream: bytes):
    source = BytesIO(stream)

    def recv_exactly(n):
        chunk = source.read(n)
        if len(chunk) < n:
            raise EOFError
        return chunk

    return recv_exactly


def receive(stream: bytes, *, max_length=BOUND, max_pdu=0):
    """(messages, data bytes) out of a byte stream of P-DATA-TF PDUs, each
    PDU checked to be within `max_pdu` (when not 0)."""
    received = bytearray()
    assembler = MessageAssembler(lambda context_id, command: received.extend)
    recv_exactly = recv_exactly_from(stream)
    messages = []
    while True:
        try:
            pdu_type, body = read_pdu(recv_exactly, max_length=max_length)
        except EOFError:
            return messages, bytes(received)
        assert pdu_type == pdata.P_DATA_TF
        assert max_pdu == 0 or len(body) <= max_pdu
        messages += assembler.feed_pdu(body)


@pytest.mark.parametrize("max_pdu", [4 * KIB, 16 * KIB, MIB, 0])
def test_it_reassembles_a_store_pynetdicom_sends(max_pdu):
    pdus = pynetdicom_pdus(dimse_messages.C_STORE_RQ, store_request(), max_pdu)

    messages, data = receive(b"".join(pdus), max_pdu=max_pdu)

    assert len(pdus) == (1 + -(-len(DATA) // (max_pdu - 6)) if max_pdu else 2)
    [message] = messages
    assert message.context_id == 1
    assert message.command.CommandField == C_STORE_RQ
    assert message.command.MessageID == 7
    assert message.command.AffectedSOPInstanceUID == INSTANCE
    assert data == DATA


def test_it_reassembles_command_and_data_sent_in_one_pdu():
    stream = one_pdu(pynetdicom_pdvs(dimse_messages.C_STORE_RQ, store_request(), 0))

    messages, data = receive(stream)

    assert [m.command.MessageID for m in messages] == [7]
    assert data == DATA


def test_it_reassembles_a_command_fragmented_across_pdus_by_pynetdicom():
    pdus = pynetdicom_pdus(dimse_messages.C_STORE_RQ, store_request(b"\x08\x00" * 100), 64)

    messages, data = receive(b"".join(pdus), max_pdu=64)

    assert [m.command.AffectedSOPInstanceUID for m in messages] == [INSTANCE]
    assert data == b"\x08\x00" * 100


def test_a_command_cut_anywhere_reassembles_to_the_same_values():
    message = dimse_messages.C_STORE_RQ()
    message.primitive_to_message(store_request())
    command = pynetdicom_encode(message.command_set, True, True)
    expected = pynetdicom_decode(BytesIO(command), True, True)

    for cut in range(1, len(command)):
        first = one_pdu([struct.pack(">LBB", cut + 2, 3, 0x01) + command[:cut]])
        rest = one_pdu([struct.pack(">LBB", len(command) - cut + 2, 3, 0x03) + command[cut:]])
        data = one_pdu([struct.pack(">LBB", 6, 3, 0x02) + b"DATA"])

        [received], data = receive(first + rest + data)

        assert received.context_id == 3
        assert received.command.MessageID == expected.MessageID
        assert received.command.AffectedSOPInstanceUID == expected.AffectedSOPInstanceUID
        assert data == b"DATA"


def test_messages_without_data_complete_on_their_last_command_fragment():
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    stream = b"".join(
        pynetdicom_pdus(dimse_messages.C_ECHO_RQ, echo, 16 * KIB)
        + pynetdicom_pdus(dimse_messages.C_STORE_RQ, store_request(b"ab", 2), 16 * KIB)
        + pynetdicom_pdus(dimse_messages.C_ECHO_RQ, echo, 16 * KIB)
    )

    messages, data = receive(stream)

    assert [m.command.CommandField for m in messages] == [C_ECHO_RQ, C_STORE_RQ, C_ECHO_RQ]
    assert data == b"ab"


def test_the_sink_is_opened_with_the_command_before_data_arrives():
    opened = []
    assembler = MessageAssembler(lambda context_id, command: opened.append((context_id, command.MessageID)) or len)
    stream = b"".join(pynetdicom_pdus(dimse_messages.C_STORE_RQ, store_request(), 4 * KIB, context_id=5))
    bodies = []
    recv_exactly = recv_exactly_from(stream)
    for _ in range(2):
        bodies.append(read_pdu(recv_exactly, max_length=BOUND)[1])

    assert assembler.feed_pdu(bodies[0]) == [] and opened == [(5, 7)]
    assert assembler.feed_pdu(bodies[1]) == [] and assembler.in_message()


def test_the_assembler_keeps_no_data_set_bytes():
    command = encode(CommandField=C_STORE_RQ, MessageID=1, CommandDataSetType=0)
    fragment = memoryview(bytes(MIB))
    written = []
    assembler = MessageAssembler(lambda context_id, command: lambda f: written.append(len(f)))
    assembler.feed(PDV(1, True, True, memoryview(command)))

    tracemalloc.start()
    for _ in range(64):
        assembler.feed(PDV(1, False, False, fragment))
    message = assembler.feed(PDV(1, False, True, fragment))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    assert message.command.MessageID == 1
    assert sum(written) == 65 * MIB
    assert peak < 64 * KIB  # 65 MiB went through


CUTS = [(m, s) for m in (4 * KIB, 16 * KIB, MIB, 0) for s in (0, 1, 4 * KIB - 6, 4 * KIB - 5, 300 * KIB)]


@pytest.mark.parametrize("max_pdu, size", CUTS + [(7, 0), (7, 1), (7, 250), (100, 250)])
def test_pynetdicom_reads_back_what_pdata_pdus_cuts(max_pdu, size):
    payload = DATA[:size]

    pdus = list(pdata.pdata_pdus(5, payload, is_command=False, max_pdu=max_pdu))

    fragments = []
    for i, buffers in enumerate(pdus):
        assert buffers[1].obj is payload  # a slice, not a copy
        encoded = b"".join(buffers)
        assert len(encoded) - 6 <= (max_pdu or pdata.UNLIMITED_FRAGMENT + 6)
        assert len(encoded) - 6 == len(buffers[1]) + 6
        decoded = pdu.P_DATA_TF()
        decoded.decode(encoded)
        [item] = decoded.presentation_data_value_items
        assert item.presentation_context_id == 5
        control, fragment = item.presentation_data_value[0], item.presentation_data_value[1:]
        assert control == (0x02 if i == len(pdus) - 1 else 0x00)
        fragments.append(fragment)
    assert b"".join(fragments) == payload
    assert len(pdus) == max(1, -(-size // ((max_pdu or pdata.UNLIMITED_FRAGMENT + 6) - 6)))


def test_a_command_cut_by_pdata_pdus_is_marked_as_command():
    command = encode(CommandField=C_ECHO_RQ, MessageID=1, CommandDataSetType=0x0101)
    pdus = pdata.pdata_pdus(1, command, is_command=True, max_pdu=20)

    messages, _ = receive(b"".join(b"".join(p) for p in pdus), max_pdu=20)

    assert [m.command.CommandField for m in messages] == [C_ECHO_RQ]


def test_headers_for_a_file_region_frame_it_as_pdata_pdus_would():
    """A sender puts pdata_header() before each region it sends with
    os.sendfile: the same bytes as pdata_pdus."""
    expected = b"".join(b"".join(p) for p in pdata.pdata_pdus(3, DATA, is_command=False, max_pdu=16 * KIB))

    sent = b"".join(
        pdata.pdata_header(3, length, is_command=False, is_last=last) + DATA[offset : offset + length]
        for offset, length, last in pdata.fragments(len(DATA), 16 * KIB)
    )

    assert sent == expected


def test_a_maximum_pdu_length_without_room_for_a_fragment_is_refused():
    with pytest.raises(ProtocolError):
        list(pdata.pdata_pdus(1, b"abc", is_command=False, max_pdu=6))


def test_release_and_abort_are_encoded_as_pynetdicom_does():
    assert pdata.RELEASE_RQ == pdu.A_RELEASE_RQ().encode()
    assert pdata.RELEASE_RP == pdu.A_RELEASE_RP().encode()
    theirs = pdu.A_ABORT_RQ()
    theirs.decode(pdata.abort_pdu(2, UNRECOGNIZED_PDU))
    assert (theirs.source, theirs.reason_diagnostic) == (2, UNRECOGNIZED_PDU)


def test_it_decodes_pynetdicoms_abort_and_release():
    abort = pdu.A_ABORT_RQ()
    abort.source, abort.reason_diagnostic = 0x02, 0x06
    pdu_type, body = read_pdu(recv_exactly_from(abort.encode()), max_length=BOUND)

    assert (pdu_type, pdata.decode_abort(body)) == (pdata.A_ABORT, (2, 6))
    pdu_type, body = read_pdu(recv_exactly_from(pdu.A_RELEASE_RQ().encode()), max_length=BOUND)
    assert pdu_type == pdata.A_RELEASE_RQ and pdata.check_release(body) is None


@pytest.mark.parametrize("body", [b"", b"\x00" * 3, b"\x00" * 5])
def test_it_refuses_release_and_abort_of_the_wrong_length(body):
    with pytest.raises(ProtocolError):
        pdata.decode_abort(body)
    with pytest.raises(ProtocolError):
        pdata.check_release(body)


def test_a_pdu_length_above_the_bound_is_refused_before_its_body_is_read():
    asked = []

    def recv_exactly(n):
        asked.append(n)
        return struct.pack(">BxL", pdata.P_DATA_TF, 0xFFFFFFFF)

    with pytest.raises(ProtocolError):
        read_pdu(recv_exactly, max_length=16 * KIB)
    assert asked == [6]
    with pytest.raises(ProtocolError):
        PDUReader(max_length=16 * KIB).feed(struct.pack(">BxL", pdata.P_DATA_TF, 16 * KIB + 1))


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0xFF])
def test_an_unknown_pdu_type_is_refused_as_unrecognised(pdu_type):
    with pytest.raises(ProtocolError) as refused:
        read_pdu(recv_exactly_from(struct.pack(">BxL", pdu_type, 4) + b"\x00" * 4), max_length=BOUND)
    assert refused.value.abort_reason == UNRECOGNIZED_PDU


def test_a_reader_fed_in_pieces_of_any_size_gives_the_same_pdus():
    stream = b"".join(pynetdicom_pdus(dimse_messages.C_STORE_RQ, store_request(), 4 * KIB))
    expected, recv_exactly = [], recv_exactly_from(stream)
    while len(expected) < 1 + -(-len(DATA) // (4 * KIB - 6)):
        expected.append(read_pdu(recv_exactly, max_length=4 * KIB))
    rng = random.Random(2)

    for sizes in ([1], [5, 7], [4 * KIB + 6], [MIB]):
        reader, got, offset = PDUReader(max_length=4 * KIB), [], 0
        while offset < len(stream):
            size = rng.choice(sizes)
            got += reader.feed(stream[offset : offset + size])
            offset += size
        assert got == expected


def pdv(length, context_id=1, control=0x03, value=b""):
    return struct.pack(">LBB", length, context_id, control) + value


MALFORMED_BODIES = {
    "empty P-DATA-TF": b"",
    "PDV longer than its PDU": pdv(10, value=b"abcd"),
    "PDV length 0": pdv(0) + b"abcd",
    "PDV length 1": pdv(1) + b"abcd",
    # Read on after its 1 byte, the next item would look valid: only the
    # length check stops this one.
    "PDV length 1 before a plausible item": pdv(1, 1, 0x00) + b"\x00\x00\x06\x01\x02abcd",
    "context ID 0": pdv(6, 0, value=b"abcd"),
    "even context ID": pdv(6, 2, value=b"abcd"),
    "reserved control bits": pdv(6, 1, 0x07, b"abcd"),
    "high control bit": pdv(6, 1, 0x80, b"abcd"),
    "one trailing byte": pdv(6, value=b"abcd") + b"\x00",
    "five trailing bytes": pdv(6, value=b"abcd") + b"\x00" * 5,
    "second PDV past the end": pdv(6, value=b"abcd") + pdv(0xFFFFFFFF),
}


@pytest.mark.parametrize("case", MALFORMED_BODIES)
def test_it_refuses_a_malformed_pdv(case):
    with pytest.raises(ProtocolError):
        list(iter_pdvs(MALFORMED_BODIES[case]))


STORE_COMMAND = encode(CommandField=C_STORE_RQ, MessageID=1, AffectedSOPInstanceUID="1.2", CommandDataSetType=0)
ECHO_COMMAND = encode(CommandField=C_ECHO_RQ, MessageID=1, CommandDataSetType=0x0101)


def command(context_id=1, value=STORE_COMMAND, last=True):
    return PDV(context_id, True, last, memoryview(value))


def data(context_id=1, value=b"ab", last=False):
    return PDV(context_id, False, last, memoryview(value))


MALFORMED_SEQUENCES = {
    "data before any command": [data()],
    "data before the command's last fragment": [command(value=STORE_COMMAND[:20], last=False), data()],
    "command while data is expected": [command(), data(), command()],
    "command right after a command that announced data": [command(), command()],
    "data after a message without data": [command(value=ECHO_COMMAND), data()],
    "context change within a command": [command(value=STORE_COMMAND[:20], last=False), command(3)],
    "context change within the data": [command(), data(), data(3)],
    "command set too long": [command(value=bytes(40 * KIB), last=False)] * 2,
    "command set without CommandDataSetType": [command(value=encode(CommandField=C_ECHO_RQ, MessageID=1))],
    "command set malformed": [command(value=b"\x00" * 12)],
}


@pytest.mark.parametrize("case", MALFORMED_SEQUENCES)
def test_it_refuses_pdvs_out_of_sequence(case):
    assembler = MessageAssembler(lambda context_id, command: len)
    *before, last = MALFORMED_SEQUENCES[case]
    for good in before:
        assembler.feed(good)

    with pytest.raises(ProtocolError):
        assembler.feed(last)


DATA_BODIES = {
    "a data fragment": pdv(6, value=b"abcd", control=0x00),
    "the last data fragment": pdv(6, value=b"abcd", control=0x02),
    "an empty last data fragment": pdv(2, control=0x02),
    "a data fragment on another context": pdv(6, 3, 0x00, b"abcd"),
    "a command fragment": pdv(6, control=0x01, value=b"abcd"),
    "the last command fragment": pdv(6, control=0x03, value=b"abcd"),
    "reserved control bits": pdv(6, 1, 0x04, b"abcd"),
    "high control bit": pdv(6, 1, 0x82, b"abcd"),
    "two data fragments": pdv(4, value=b"ab", control=0x00) + pdv(4, value=b"cd", control=0x02),
    "a PDV shorter than its PDU": pdv(4, value=b"abcd", control=0x00),
    "a PDV longer than its PDU": pdv(8, value=b"abcd", control=0x00),
    "a bare header": pdv(2, control=0x00),
    "less than a header": b"\x00\x00\x00",
}


def outcome(feed_body, body, received):
    try:
        messages = feed_body(body)
    except ProtocolError:
        return "refused", bytes(received)
    return [m.command.MessageID for m in messages], bytes(received)


@pytest.mark.parametrize("case", DATA_BODIES)
def test_a_data_pdu_ends_as_it_would_pdv_by_pdv(case):
    """feed_pdu takes a body that is one data PDV of the message under way
    straight to the sink; every body ends exactly as when its PDVs are fed
    one by one: the same bytes in the sink, messages, or refusal."""
    results = []
    for by_pdv in (False, True):
        received = bytearray()
        assembler = MessageAssembler(lambda context_id, command, received=received: received.extend)
        assembler.feed(command())
        assembler.feed(data(value=b"xy"))
        if by_pdv:
            feed_body = lambda body, a=assembler: [m for p in iter_pdvs(body) if (m := a.feed(p)) is not None]  # noqa: E731
        else:
            feed_body = assembler.feed_pdu
        first = outcome(feed_body, memoryview(bytearray(DATA_BODIES[case])), received)
        after = outcome(feed_body, memoryview(pdv(4, value=b"zz", control=0x02)), received) if first[0] == [] else None
        results.append((first, after, assembler.in_message()))

    assert results[0] == results[1]


def mutate(rng: random.Random, stream: bytes) -> bytes:
    """One of: random bytes, flipped bytes, a stated length replaced, a
    truncation, an insertion, PDUs repeated or swapped."""
    kind = rng.randrange(6)
    data = bytearray(stream)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if kind == 1:
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 2:  # a PDU or PDV length, or anything 4 bytes long
        at = rng.choice([2, 6, rng.randrange(len(data) - 4)])
        data[at : at + 4] = rng.choice([0, 1, 2, 5, 0xFFFFFFFF, rng.randrange(1 << 32)]).to_bytes(4, "big")
    elif kind == 3:
        del data[rng.randrange(1, len(data)) :]
    elif kind == 4:
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randrange(1, 16))
    else:
        half = rng.randrange(1, len(data))
        data = data[half:] + data[:half] if rng.random() < 0.5 else data + data[:half]
    return bytes(data)


def test_malformed_input_raises_protocol_errors_and_nothing_else():
    """3,000 mutated streams through the reader, the assembler and the
    command set decoder: a ProtocolError is the only way out."""
    rng = random.Random(14)
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 3, "1.2.840.10008.1.1"
    seeds = [
        b"".join(pynetdicom_pdus(dimse_messages.C_STORE_RQ, store_request(b"x" * 500), 64)),
        b"".join(pynetdicom_pdus(dimse_messages.C_STORE_RQ, store_request(b"x" * 500), 0)),
        b"".join(pynetdicom_pdus(dimse_messages.C_ECHO_RQ, echo, 4 * KIB)) + pdata.RELEASE_RQ,
        one_pdu(pynetdicom_pdvs(dimse_messages.C_STORE_RQ, store_request(b"y" * 40), 0)) + pdata.abort_pdu(),
    ]
    outcomes = {"refused": 0, "accepted": 0}

    for _ in range(3000):
        stream = mutate(rng, rng.choice(seeds))
        reader = PDUReader(max_length=4 * KIB)
        assembler = MessageAssembler(lambda context_id, command: len, max_command_length=1024)
        try:
            offset = 0
            while offset < len(stream):
                size = rng.randrange(1, 600)
                for pdu_type, body in reader.feed(stream[offset : offset + size]):
                    if pdu_type == pdata.P_DATA_TF:
                        assembler.feed_pdu(body)
                    elif pdu_type == pdata.A_ABORT:
                        pdata.decode_abort(body)
                    elif pdu_type in (pdata.A_RELEASE_RQ, pdata.A_RELEASE_RP):
                        pdata.check_release(body)
                offset += size
            outcomes["accepted"] += 1
        except ProtocolError:
            outcomes["refused"] += 1

    for _ in range(1000):
        try:
            decode(mutate(rng, rng.choice([STORE_COMMAND, ECHO_COMMAND])))
        except ProtocolError:
            outcomes["refused"] += 1

    assert outcomes["refused"] > 1500  # most mutations break something
    assert outcomes["accepted"] > 50  # and the harmless ones (a changed UID byte) still go through


def test_pynetdicom_receives_the_store_we_encode_and_cut():
    """Our command set and data set, cut by pdata_pdus at 4 KB, read by
    pynetdicom's own DIMSE message decoder."""
    command = encode(
        CommandField=C_STORE_RQ,
        MessageID=9,
        AffectedSOPClassUID=CT,
        AffectedSOPInstanceUID=INSTANCE,
        Priority=0,
        CommandDataSetType=0x0001,
        MoveOriginatorApplicationEntityTitle="ORTHANC",
        MoveOriginatorMessageID=4,
    )
    message = dimse_messages.DIMSEMessage()
    complete = False

    for payload, is_command in ((command, True), (DATA, False)):
        for buffers in pdata.pdata_pdus(1, payload, is_command=is_command, max_pdu=4 * KIB):
            received = pdu.P_DATA_TF()
            received.decode(b"".join(buffers))
            complete = message.decode_msg(received.to_primitive())

    assert complete
    assert message.__class__ is dimse_messages.C_STORE_RQ
    request = message.message_to_primitive()
    assert (request.MessageID, request.AffectedSOPInstanceUID, request.Priority) == (9, INSTANCE, 0)
    assert (request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID) == ("ORTHANC", 4)
    assert request.DataSet.getvalue() == DATA
