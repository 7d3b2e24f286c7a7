"""runscp under fuzzing: 1,200 malformed PDUs and 250 malformed datasets.

Seeded (the same bytes every run; `FUZZ_SEED=n` tries others).  After each
batch runscp must answer C-ECHO; no malformed dataset may be answered
Success; runscp's peak memory stays bounded.
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
from tests.support.processes import MODALITY, peak_rss_mb
from tests.support.rawdata import as_file, explicit_element, identifying, nested_sequences, raw_association

SEED = int(os.environ.get("FUZZ_SEED", "20261203"))
PDU_BATCHES, PDUS_PER_BATCH = 6, 200
DATASET_BATCHES, DATASETS_PER_BATCH = 5, 50
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"


# --- PDUs (PS3.8 9.3) ------------------------------------------------------------


def _item(item_type, body):
    return struct.pack(">BBH", item_type, 0, len(body)) + body


def association_rq(called=b"PACS", calling=MODALITY.encode()):
    """A well-formed A-ASSOCIATE-RQ for Verification, the seed of the mutations."""
    context = _item(0x30, VERIFICATION.encode()) + _item(0x40, IMPLICIT.encode())
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.1")
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16)
        + calling.ljust(16)
        + b"\x00" * 32
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + struct.pack(">BBHBBBB", 0x20, 0, len(context) + 4, 1, 0, 0, 0)
        + context
        + _item(0x50, user)
    )
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


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
    """Send `data`, say we are done (FIN), and wait for runscp to close."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass  # runscp closed first: as good as an answer


def _echo(port):
    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "runscp answers an association after the batch"
    try:
        return assoc.send_c_echo().Status
    finally:
        assoc.release()


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
