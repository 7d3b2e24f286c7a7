"""runscp under fuzzing: 1,200 malformed PDUs, 1,000 malformed data phases
(after a good A-ASSOCIATE-RQ: PDVs longer than their PDU, fragments out of
order, a command PDV after a data PDV, lengths up to 0xFFFFFFFF, …), 400
A-ASSOCIATE-RQs with mutated items, and 250 malformed datasets.

Seeded (the same bytes every run; `FUZZ_SEED=n` tries others).  After each
batch runscp must answer C-ECHO; an inconsistent data phase is answered
with A-ABORT, a mutated request with A-ASSOCIATE-AC, -RJ or A-ABORT; no
malformed dataset may be answered Success; runscp's peak memory stays
bounded.
"""

import os
import random
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicomnodes.models import Instance
from dicomnodes.net import commandset as cs
from dicomnodes.net.pdata import RELEASE_RQ
from tests.support.processes import MODALITY, peak_rss_mb
from tests.support.rawdata import as_file, explicit_element, identifying, nested_sequences, raw_association

SEED = int(os.environ.get("FUZZ_SEED", "20261203"))
PDU_BATCHES, PDUS_PER_BATCH = 6, 200
DATA_PHASE_BATCHES, DATA_PHASES_PER_BATCH = 5, 200
RQ_ITEM_BATCHES, RQS_PER_BATCH = 2, 200
DATASET_BATCHES, DATASETS_PER_BATCH = 5, 50
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"


# --- PDUs (PS3.8 9.3) ------------------------------------------------------------


def _item(item_type, body):
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def rq_items():
    """The items of association_rq(): application context, presentation
    context (its sub-items after 4 bytes of ID and reserved), user information."""
    context = _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT.encode())
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.1")
    return [
        _item(0x10, b"1.2.840.10008.3.1.1.1"),
        struct.pack(">BBHBBBB", 0x20, 0, len(context) + 4, 1, 0, 0, 0) + context,
        _item(0x50, user),
    ]


def rq_from(items, called=b"PACS", calling=MODALITY.encode()):
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + b"\x00" * 32 + b"".join(items)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def association_rq(called=b"PACS", calling=MODALITY.encode()):
    """A well-formed A-ASSOCIATE-RQ for Verification (context ID 1), the seed of the mutations."""
    return rq_from(rq_items(), called, calling)


def _flip(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def malformed_pdus(rng):
    """Endless malformed PDUs, of every kind in turn."""
    rq = association_rq()
    kinds = [
        lambda: rng.randbytes(rng.randint(1, 600)),  # noise
        lambda: struct.pack(">BBI", rng.randint(1, 7), 0, rng.randint(0, 300)) + rng.randbytes(rng.randint(0, 300)),
        lambda: _flip(rng, rq),  # a mutated A-ASSOCIATE-RQ
        lambda: rq[: rng.randint(1, len(rq) - 1)],  # a cut one
        lambda: rq[:2] + struct.pack(">I", rng.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(rq) + 99])) + rq[6:],
        lambda: bytes([rng.choice([0x00, 0x08, 0x0F, 0x80, 0xFF])]) + rng.randbytes(rng.randint(5, 80)),
        lambda: struct.pack(">BBI", 0x04, 0, 12) + struct.pack(">IBB", 6, 1, 3) + b"\x00" * 4,  # P-DATA first
        lambda: struct.pack(">BBI", rng.choice([5, 6, 7]), 0, 4) + b"\x00" * 4,  # release/abort first
        lambda: rq + struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0) + rng.randbytes(64),  # then a huge P-DATA
        lambda: rq + struct.pack(">BBI", 0x04, 0, 40) + struct.pack(">IBB", rng.randint(0, 2**32 - 1), 1, 3),
    ]
    while True:
        for kind in kinds:
            yield kind()


def _send_and_close(port, data):
    """Send `data`, say we are done (FIN), and wait for runscp to close;
    returns what runscp answered (empty if it closed first)."""
    reply = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass  # runscp closed first: as good as an answer
    return bytes(reply)


def pdu_types(reply):
    """The types of the PDUs in `reply`, in order (a cut last one included)."""
    types, pos = [], 0
    while pos + 6 <= len(reply):
        types.append(reply[pos])
        pos += 6 + struct.unpack_from(">I", reply, pos + 2)[0]
    return types


def _echo(port):
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "runscp answers an association after the batch"
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


# --- the data phase, after a good A-ASSOCIATE-RQ ----------------------------------------


def _pdv(fragment, *, context_id=1, control=0x03, length=None):
    """A PDV item (control 0x03: command, last); `length` overrides the stated one."""
    return struct.pack(">IBB", len(fragment) + 2 if length is None else length, context_id, control) + fragment


def _pdata(*pdvs, length=None):
    body = b"".join(pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body) if length is None else length) + body


ECHO_RQ = cs.encode(
    CommandField=cs.C_ECHO_RQ, MessageID=1, AffectedSOPClassUID=VERIFICATION, CommandDataSetType=cs.NO_DATA_SET
)
# A command announcing a data set (a C-FIND-RQ on the Verification context).
FIND_RQ = cs.encode(
    CommandField=cs.C_FIND_RQ,
    MessageID=2,
    AffectedSOPClassUID=VERIFICATION,
    Priority=0,
    CommandDataSetType=cs.DATA_SET_PRESENT,
)


def malformed_data_phases(rng):
    """Endless (A-ASSOCIATE-RQ + P-DATA…) byte strings, each inconsistent in
    a way runscp must answer with A-ABORT before our FIN reaches it."""
    rq = association_rq()
    data = rng.randbytes(64)
    half = len(ECHO_RQ) // 2

    def longer_pdv():  # a PDV stating more than its PDU holds, up to 0xFFFFFFFF
        return _pdata(_pdv(ECHO_RQ, length=rng.randint(len(ECHO_RQ) + 3, 0xFFFFFFFF)))

    kinds = [
        longer_pdv,
        lambda: _pdata(_pdv(ECHO_RQ), _pdv(data, control=0x02, length=rng.randint(len(data) + 3, 2**20))),
        lambda: _pdata(_pdv(b"", length=rng.choice([0, 1]))),  # a PDV shorter than its own header
        lambda: _pdata(_pdv(data, control=rng.choice([0x00, 0x02]))),  # data before any command
        lambda: _pdata(_pdv(FIND_RQ[:half], control=0x01), _pdv(data, control=0x02)),  # data inside a command
        lambda: _pdata(_pdv(FIND_RQ), _pdv(data, control=0x00), _pdv(ECHO_RQ)),  # a command after a data PDV
        lambda: _pdata(_pdv(FIND_RQ), _pdv(data, control=0x00)) + _pdata(_pdv(ECHO_RQ)),  # the same, next PDU
        lambda: _pdata(_pdv(FIND_RQ), _pdv(data, control=0x02), _pdv(data, control=0x02)),  # data after the last
        lambda: _pdata(_pdv(ECHO_RQ[half:], control=0x01), _pdv(ECHO_RQ[:half])),  # fragments out of order
        lambda: _pdata(_pdv(ECHO_RQ, context_id=rng.choice([0, 2, 3, 127, 254, 255]))),  # even or not accepted
        lambda: _pdata(_pdv(ECHO_RQ, control=rng.choice([0x04, 0x08, 0x80, 0xFF]))),  # reserved control bits
        lambda: _pdata(_pdv(rng.randbytes(rng.randint(0, 300)))),  # a command set that is noise
        lambda: _pdata(_pdv(ECHO_RQ)[:6]),  # a PDV header and no fragment
        lambda: _pdata(_pdv(FIND_RQ[:half], control=0x01)) + RELEASE_RQ,  # release inside a message
        lambda: _pdata(_pdv(ECHO_RQ)) + _pdata(length=0),  # a P-DATA-TF without a PDV
        lambda: _pdata(_pdv(ECHO_RQ), length=len(ECHO_RQ) + 6 + rng.randint(1, 5)) + rng.randbytes(5),
        lambda: struct.pack(">BBI", 0x04, 0, rng.randint(2**22, 0xFFFFFFFF)) + rng.randbytes(32),  # past our bound
        lambda: rq,  # a second A-ASSOCIATE-RQ
        lambda: struct.pack(">BBI", rng.randint(0x08, 0xFF), 0, 4) + b"\x00" * 4,  # no such PDU type
        lambda: _pdata(_pdv(ECHO_RQ)) + _pdata(_pdv(ECHO_RQ)) + struct.pack(">BBI", 0x02, 0, 4) + b"\x00" * 4,
    ]
    while True:
        for kind in kinds:
            yield rq + kind()


def mutated_rq_items(rng):
    """Endless A-ASSOCIATE-RQs whose items (PS3.8 9.3.2) are mutated one way
    or another, the PDU length always right."""

    def retyped(item):
        return bytes([rng.randrange(256)]) + item[1:]

    def relength(item):
        return item[:2] + struct.pack(">H", rng.randint(0, 0xFFFF)) + item[4:]

    def sub_item_relength(item):  # the first sub-item: of a presentation context at 8, of user information at 4
        start = 8 if item[0] == 0x20 else 4
        if len(item) < start + 4:
            return relength(item)
        return item[: start + 2] + struct.pack(">H", rng.randint(0, 0xFFFF)) + item[start + 4 :]

    mutations = [retyped, relength, sub_item_relength, lambda item: item * rng.randint(2, 40), lambda item: b""]
    while True:
        items = rq_items()
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(items))
            if items[i]:  # not one dropped already
                items[i] = rng.choice(mutations)(items[i])
        if rng.random() < 0.2:
            rng.shuffle(items)
        yield rq_from(items)


def test_malformed_data_phases_are_aborted_and_leave_runscp_answering(fuzzed_scp):
    rng = random.Random(SEED)
    phases = malformed_data_phases(rng)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(DATA_PHASE_BATCHES):
            batch = [next(phases) for _ in range(DATA_PHASES_PER_BATCH)]
            replies = list(pool.map(lambda data: _send_and_close(fuzzed_scp.port, data), batch))
            for data, reply in zip(batch, replies):
                types = pdu_types(reply)
                assert types[:1] == [0x02], f"accepted first: {reply[:12].hex()} for {data.hex()}"
                assert types[-1] == 0x07, f"ended with A-ABORT: PDU types {types} for {data.hex()}"
            assert _echo(fuzzed_scp.port) == 0x0000
    assert peak_rss_mb(fuzzed_scp.proc.pid) < 300
    assert fuzzed_scp.proc.poll() is None


def test_requests_with_mutated_items_are_answered_and_leave_runscp_answering(fuzzed_scp):
    rng = random.Random(SEED)
    requests = mutated_rq_items(rng)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(RQ_ITEM_BATCHES):
            batch = [next(requests) for _ in range(RQS_PER_BATCH)]
            replies = list(pool.map(lambda data: _send_and_close(fuzzed_scp.port, data), batch))
            for data, reply in zip(batch, replies):
                assert pdu_types(reply)[:1] in ([0x02], [0x03], [0x07]), f"answered {reply[:12].hex()} to {data.hex()}"
            assert _echo(fuzzed_scp.port) == 0x0000
    assert peak_rss_mb(fuzzed_scp.proc.pid) < 300
    assert fuzzed_scp.proc.poll() is None


# --- datasets ----------------------------------------------------------------------


def _boundaries(data):
    """Element offsets of a flat explicit VR little endian dataset."""
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return offsets


def malformed_dataset(rng):
    """(SOP Instance UID, dataset bytes) that no reader can take whole."""
    uid, head = identifying(StudyDescription="fuzz " * rng.randint(1, 10))
    data = head + explicit_element(0x7FE0, 0x0010, b"OW", rng.randbytes(2 * rng.randint(1, 2000)))
    cuts = _boundaries(data)
    kind = rng.randrange(6)
    if kind == 0:  # cut inside an element, never between two
        i = rng.randrange(len(cuts))
        end = cuts[i + 1] if i + 1 < len(cuts) else len(data)
        return uid, data[: rng.randint(cuts[i] + 1, end - 1)]
    if kind == 1:  # a length past the end
        i = rng.randrange(1, len(cuts))
        pos = cuts[i]
        long = data[pos + 4 : pos + 6] in (b"OB", b"OW")
        field, size = (pos + 8, "<I") if long else (pos + 6, "<H")
        remaining = len(data) - field
        if long:
            value = rng.randint(remaining, 0xFFFFFFFE)
        else:
            value = rng.randint(remaining, 0xFFFF) if remaining <= 0xFFFF else None
        if value is None:  # a 2-byte length cannot reach past a big pixel element: cut instead
            return uid, data[: cuts[i] + 7]
        return uid, data[:field] + struct.pack(size, value) + data[field + struct.calcsize(size) :]
    if kind == 2:  # a VR that is none (not on the first element: a reader would try implicit VR)
        pos = cuts[rng.randrange(1, len(cuts))]
        return uid, data[: pos + 4] + bytes([rng.randrange(0x80, 0x100), rng.randrange(0x00, 0x40)]) + data[pos + 6 :]
    if kind == 3:  # undefined-length sequences never closed
        return uid, head + nested_sequences(rng.randint(1, 40), closed=False)
    if kind == 4:  # nested too deep, closed
        return uid, head + nested_sequences(rng.randint(65, 3000))
    # stray non-zero bytes after the last element, too few for an element
    return uid, data + bytes([rng.randrange(1, 256)]) + rng.randbytes(rng.randint(0, 6))


@pytest.fixture
def fuzzed_scp(start_scp):
    return start_scp()


def test_malformed_pdus_leave_runscp_answering(fuzzed_scp):
    rng = random.Random(SEED)
    pdus = malformed_pdus(rng)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(PDU_BATCHES):
            batch = [next(pdus) for _ in range(PDUS_PER_BATCH)]
            list(pool.map(lambda data: _send_and_close(fuzzed_scp.port, data), batch))
            assert _echo(fuzzed_scp.port) == 0x0000
    assert peak_rss_mb(fuzzed_scp.proc.pid) < 300
    assert fuzzed_scp.proc.poll() is None


def test_no_malformed_dataset_is_answered_success(fuzzed_scp, tmp_path):
    rng = random.Random(SEED)
    statuses = []
    for batch in range(DATASET_BATCHES):
        with raw_association(fuzzed_scp.port) as assoc:
            for n in range(DATASETS_PER_BATCH):
                uid, data = malformed_dataset(rng)
                status = assoc.send_c_store(as_file(tmp_path / f"{batch}-{n}.dcm", uid, data))
                statuses.append(status.Status)
                assert status.Status != 0x0000, f"dataset {batch}-{n} ({len(data)} bytes) answered Success"
        assert _echo(fuzzed_scp.port) == 0x0000
    assert set(statuses) == {0xC000}, "each one: cannot understand"
    assert Instance.objects.count() == 0
    quarantined = len(list((fuzzed_scp.data_dir / "quarantine").iterdir()))
    assert quarantined == DATASET_BATCHES * DATASETS_PER_BATCH, "every refused dataset is kept"
    assert peak_rss_mb(fuzzed_scp.proc.pid) < 300
