"""From the RIS to the scanner: HL7 orders sent with python-hl7's `mllp_send`
become worklist items that DCMTK `findscu -W` finds, names intact."""

import subprocess
import time

import pydicom
import pytest

from dicomnodes.models import Peer
from tests.support.processes import MLLP_SEND

SCANNER = "SCANNER1"
SPS = "ScheduledProcedureStepSequence[0]"


def segment(name, fields):
    """A segment from {field number: value}."""
    values = [""] * max(fields)
    for number, value in fields.items():
        values[number - 1] = value
    return "|".join([name, *values])


def orm(control_id, *, order, patient_id, name, charset="", code="NW", station="CTSCAN1"):
    # MSH-3 … MSH-12, then MSH-18 when given
    msh = ["MSH", "^~\\&", "RIS", "HOSP", "PACS", "RAD", "20261127090000", "", "ORM^O01", control_id, "P", "2.3.1"]
    if charset:
        msh += ["", "", "", "", "", charset]
    return "\r".join(
        [
            "|".join(msh),
            segment("PID", {3: f"{patient_id}^^^HOSP", 5: name, 7: "19700101", 8: "F"}),
            segment("PV1", {2: "O", 8: "^Referrer^Rita"}),
            segment("ORC", {1: code, 2: order, 7: "^^^20261127100000^^R", 18: station}),
            segment(
                "OBR",
                {
                    1: "1",
                    2: order,
                    4: "CTCHEST^CT Chest^LOCAL",
                    18: f"ACC{order}",
                    19: f"RP{order}",
                    20: f"SPS{order}",
                    24: "CT",
                },
            ),  # fmt: skip
        ]
    )


def send(port, text, encoding, tmp_path):
    """mllp_send a message written in `encoding`; returns its output (the ACK)."""
    path = tmp_path / f"msg-{time.monotonic_ns()}.hl7"
    path.write_bytes(text.encode(encoding))
    result = subprocess.run(
        [str(MLLP_SEND), "--loose", "-f", str(path), "-p", str(port), "127.0.0.1"], capture_output=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.decode(encoding, errors="replace")


@pytest.fixture
def scanner_peer(shared_scp):
    Peer.objects.create(name="scanner", ae_title=SCANNER, host="127.0.0.1", may_query=True)
    shared_scp.wait_until_allowed(SCANNER, "mwl")


def worklist(scp, tmp_path, *keys):
    out = tmp_path / f"mwl-{time.monotonic_ns()}"
    out.mkdir()
    result = scp.qr(
        "findscu",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        f"{SPS}.Modality",
        f"{SPS}.ScheduledStationAETitle",
        *keys,
        calling=SCANNER,
        root="-W",
        options=["-X", "-od", out],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {a.AccessionNumber: a for a in (pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm")))}


def test_greek_and_german_orders_reach_the_scanner_intact(shared_scp, scanner_peer, shared_mllp, tmp_path):
    greek = orm("G1", order="100", patient_id="P100", name="Παπαδόπουλος^Νίκος", charset="8859/7")
    german = orm("D1", order="200", patient_id="P200", name="Müller^Jürgen")  # no MSH-18: the default 8859/1
    assert "MSA|AA|G1" in send(shared_mllp.port, greek, "iso8859_7", tmp_path)
    assert "MSA|AA|D1" in send(shared_mllp.port, german, "iso8859_1", tmp_path)
    answers = worklist(shared_scp, tmp_path, f"{SPS}.ScheduledStationAETitle=CTSCAN1")
    assert set(answers) == {"ACC100", "ACC200"}
    assert str(answers["ACC100"].PatientName) == "Παπαδόπουλος^Νίκος"
    assert str(answers["ACC200"].PatientName) == "Müller^Jürgen"
    assert answers["ACC100"].ScheduledProcedureStepSequence[0].Modality == "CT"


def test_a_cancelled_order_leaves_the_worklist(shared_scp, scanner_peer, shared_mllp, tmp_path):
    new = orm("N1", order="300", patient_id="P300", name="Doe^Jane")
    assert "MSA|AA|N1" in send(shared_mllp.port, new, "ascii", tmp_path)
    assert "ACC300" in worklist(shared_scp, tmp_path)
    cancel = orm("C1", order="300", patient_id="P300", name="Doe^Jane", code="CA")
    assert "MSA|AA|C1" in send(shared_mllp.port, cancel, "ascii", tmp_path)
    assert "ACC300" not in worklist(shared_scp, tmp_path)
