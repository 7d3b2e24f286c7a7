"""runscp's own runtime (issue 14) with DCMTK and pynetdicom peers: every
transfer syntax storescu can propose stored byte for byte and found by
C-FIND, and maximum PDU lengths of 4 KB, 16 KB, 1 MB and unlimited on both
sides, checked on the wire by a relay that records each PDU's length.

The files are made here: a generated CT, compressed by DCMTK's own tools
(dcmcjpeg, dcmcjpls, dcmcrle, dcmconv) or by pydicom (JPEG 2000, which
DCMTK cannot write), so storescu sends each dataset as it is in its file
(checked once against storescp +B: all thirteen identical).
"""

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from dicomnodes.models import Instance, Peer
from dicomnodes.net.pdata import PDV_HEADER_LENGTH, UNLIMITED_FRAGMENT
from tests.support.dicomdata import make_ct
from tests.support.processes import MODALITY, dcmtk, free_port, port_accepts, wait_until
from tests.support.rawdata import as_file, explicit_element, identifying, pdu_recording_relay, raw_association
from tests.support.transfer import CapturingScp, dataset_bytes, stored_dataset

VIEWER = "VIEWER1"


# --- files in every transfer syntax -----------------------------------------------


def _dcmtk_tool(tool, *options):
    def convert(src, dest):
        dcmtk(tool, *options, src, dest, check=True)
        return dest

    return convert


def _eight_bit(convert):
    """JPEG baseline takes 8-bit samples only: the CT cut to 8 bits first."""

    def eight_bit_then(src, dest):
        ds = pydicom.dcmread(src)
        pixels = (ds.pixel_array % 256).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = pixels.tobytes()
        eight = dest.with_name("8bit-" + dest.name)
        ds.save_as(eight, enforce_file_format=True)
        return convert(eight, dest)

    return eight_bit_then


def _pydicom_compress(syntax, **options):
    def compress(src, dest):
        ds = pydicom.dcmread(src)
        ds.compress(syntax, **options)
        ds.save_as(dest, enforce_file_format=True)
        return dest

    return compress


def _as_is(src, dest):
    return src


# (storescu options, transfer syntax UID, how the CT becomes a file in it)
SYNTAXES = {
    "default (explicit little)": ([], "1.2.840.10008.1.2.1", _as_is),
    "-xe explicit little": (["-xe"], "1.2.840.10008.1.2.1", _as_is),
    "-xi implicit little": (["-xi"], "1.2.840.10008.1.2", _dcmtk_tool("dcmconv", "+ti")),
    "-xb explicit big": (["-xb"], "1.2.840.10008.1.2.2", _dcmtk_tool("dcmconv", "+tb")),
    "-xd deflated": (["-xd"], "1.2.840.10008.1.2.1.99", _dcmtk_tool("dcmconv", "+td")),
    "-xy JPEG baseline": (["-xy"], "1.2.840.10008.1.2.4.50", _eight_bit(_dcmtk_tool("dcmcjpeg", "+eb"))),
    "-xx JPEG extended": (["-xx"], "1.2.840.10008.1.2.4.51", _dcmtk_tool("dcmcjpeg", "+ee")),
    "-xs JPEG lossless SV1": (["-xs"], "1.2.840.10008.1.2.4.70", _dcmtk_tool("dcmcjpeg", "+e1")),
    "-xt JPEG-LS lossless": (["-xt"], "1.2.840.10008.1.2.4.80", _dcmtk_tool("dcmcjpls", "+el")),
    "-xu JPEG-LS near-lossless": (["-xu"], "1.2.840.10008.1.2.4.81", _dcmtk_tool("dcmcjpls", "+en")),
    "-xv JPEG 2000 lossless": (["-xv"], "1.2.840.10008.1.2.4.90", _pydicom_compress(JPEG2000Lossless)),
    "-xw JPEG 2000": (["-xw"], "1.2.840.10008.1.2.4.91", _pydicom_compress(JPEG2000, j2k_psnr=[80])),
    "-xr RLE lossless": (["-xr"], "1.2.840.10008.1.2.5", _dcmtk_tool("dcmcrle")),
}


@pytest.mark.parametrize("case", SYNTAXES)
def test_every_syntax_storescu_proposes_is_stored_byte_for_byte_and_found(shared_scp, viewer, tmp_path, case):
    options, syntax, convert = SYNTAXES[case]
    ct = make_ct(tmp_path / "ct.dcm", size=64, patient_id="TSX")
    src = convert(ct, tmp_path / "sent.dcm")
    sent = pydicom.dcmread(src, stop_before_pixels=True)
    assert sent.file_meta.TransferSyntaxUID == syntax, "the file to send is in the syntax under test"
    result = shared_scp.store(src, options=options)
    assert result.returncode == 0, result.stdout + result.stderr
    uid = str(sent.SOPInstanceUID)
    assert Instance.objects.get(sop_instance_uid=uid).transfer_syntax_uid == syntax
    sent_bytes = dataset_bytes(src.read_bytes())
    if len(sent_bytes) % 2:  # dcmconv may write an odd deflated stream; storescu pads it with a NUL (storescp +B)
        sent_bytes += b"\x00"
    assert stored_dataset(uid) == sent_bytes, f"{case}: stored bytes differ from those sent"
    out = tmp_path / "found"
    out.mkdir()
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={sent.StudyInstanceUID}"]
    keys += [f"SeriesInstanceUID={sent.SeriesInstanceUID}", f"SOPInstanceUID={uid}"]
    found = shared_scp.qr("findscu", *keys, calling=viewer, options=["-X", "-od", out])
    assert found.returncode == 0, found.stdout + found.stderr
    assert [pydicom.dcmread(p).SOPInstanceUID for p in out.glob("rsp*.dcm")] == [uid]


# --- maximum PDU lengths ------------------------------------------------------------


def largest_pdata(lengths, max_pdu):
    """The P-DATA-TF length a sender that cuts at `max_pdu` reaches with a
    dataset longer than any fragment (0: our cut for an unlimited peer)."""
    assert lengths, "P-DATA-TF PDUs went through the relay"
    return UNLIMITED_FRAGMENT + PDV_HEADER_LENGTH if max_pdu == 0 else max_pdu


@pytest.mark.parametrize(
    ("max_pdu", "size"),
    [(4096, 256), (16384, 256), (131072, 256), (4096, 1600)],
    ids=["4 KB", "16 KB", "128 KB", "4 KB, 5 MB spooled"],
)
def test_storescu_pdus_of_its_length_arrive_whole(shared_scp, tmp_path, max_pdu, size):
    src = make_ct(tmp_path / "ct.dcm", size=size)
    with pdu_recording_relay(shared_scp.port) as (port, record):
        pdu = ["--max-pdu", max_pdu, "--max-send-pdu", max_pdu]
        result = dcmtk("storescu", *pdu, "-aet", MODALITY, "-aec", "PACS", "127.0.0.1", port, src)
    assert result.returncode == 0, result.stdout + result.stderr
    # DCMTK cuts 6 bytes short of its length (a PDU header's worth).
    assert max_pdu - 6 <= max(record.pdata_lengths("to_target")) <= max_pdu, "storescu cut at its length"
    assert max(record.pdata_lengths("from_target")) <= max_pdu
    uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    assert stored_dataset(uid) == dataset_bytes(src.read_bytes())


def test_a_peer_sending_pdus_of_our_1_mb_maximum_is_stored_whole(shared_scp, tmp_path):
    """We state 1 MiB; pynetdicom cuts a 3 MiB dataset at exactly that."""
    uid, head = identifying()
    data = head + explicit_element(0x7FE0, 0x0010, b"OW", np.random.default_rng(14).bytes(3 * 2**20))
    path = as_file(tmp_path / "big.dcm", uid, data)
    with pdu_recording_relay(shared_scp.port) as (port, record), raw_association(port) as assoc:
        assert assoc.send_c_store(path).Status == 0x0000
    assert max(record.pdata_lengths("to_target")) == 2**20
    assert stored_dataset(uid) == data


# Our C-STORE sub-operations to a peer of each maximum: DCMTK takes 4 KB to
# 128 KB, pynetdicom any (0: unlimited).
PEER_LIMITS = [4096, 16384, 2**20, 0]


@pytest.fixture
def a_big_ct_in_runscp(shared_scp, viewer, tmp_path):
    """A 1.2 MB CT (bigger than any fragment we cut) stored in runscp."""
    src = make_ct(tmp_path / "big" / "ct.dcm", size=768, patient_id="PDU")
    assert shared_scp.store(src).returncode == 0
    return src


def _get_with_getscu(port, study, max_pdu, out):
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
    args = ["-S", "--max-pdu", max_pdu, "+B", "-od", out, "-aet", VIEWER, "-aec", "PACS", "127.0.0.1", port]
    result = dcmtk("getscu", *args, *keys)
    assert result.returncode == 0, result.stdout + result.stderr
    return {str(pydicom.dcmread(p).SOPInstanceUID): dataset_bytes(p.read_bytes()) for p in out.iterdir()}


def _get_with_pynetdicom(port, study, max_pdu):
    ae = AE(ae_title=VIEWER)
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)  # as stored: sent from the file
    received = {}

    def on_store(event):
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="PACS",
        max_pdu=max_pdu,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        statuses = [
            status.Status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0x0000
    return received


@pytest.mark.parametrize("max_pdu", PEER_LIMITS)
def test_c_get_sends_in_pdus_of_the_callers_length(shared_scp, a_big_ct_in_runscp, tmp_path, max_pdu):
    src = pydicom.dcmread(a_big_ct_in_runscp, stop_before_pixels=True)
    with pdu_recording_relay(shared_scp.port) as (port, record):
        if max_pdu and max_pdu <= 131072:
            out = tmp_path / "got"
            out.mkdir()
            received = _get_with_getscu(port, src.StudyInstanceUID, max_pdu, out)
        else:
            received = _get_with_pynetdicom(port, src.StudyInstanceUID, max_pdu)
    ours = record.pdata_lengths("from_target")
    assert max(ours) == largest_pdata(ours, max_pdu), f"our C-STORE went in PDUs up to {max(ours)}"
    assert received == {str(src.SOPInstanceUID): dataset_bytes(a_big_ct_in_runscp.read_bytes())}


def test_a_decompressed_instance_goes_in_pdus_of_the_callers_length(shared_scp, viewer, tmp_path):
    """getscu proposes uncompressed syntaxes only: a JPEG lossless image is
    decoded and sent from memory (not with sendfile), cut at 4 KB too."""
    ct = make_ct(tmp_path / "ct.dcm", size=512, patient_id="PDU")
    src = SYNTAXES["-xs JPEG lossless SV1"][2](ct, tmp_path / "jpeg.dcm")
    assert shared_scp.store(src, options=["-xs"]).returncode == 0
    study = pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID
    out = tmp_path / "got"
    out.mkdir()
    with pdu_recording_relay(shared_scp.port) as (port, record):
        _get_with_getscu(port, study, 4096, out)
    assert max(record.pdata_lengths("from_target")) == 4096
    (got,) = out.iterdir()
    assert pydicom.dcmread(got).file_meta.TransferSyntaxUID.is_compressed is False
    assert np.array_equal(pydicom.dcmread(got).pixel_array, pydicom.dcmread(ct).pixel_array), "lossless, decoded"


def _storescp(port, max_pdu, out):
    return subprocess.Popen(
        ["storescp", "-aet", "DEST", "--max-pdu", str(max_pdu), "+B", "-od", str(out), str(port)],
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("max_pdu", PEER_LIMITS)
def test_c_move_sends_in_pdus_of_the_destinations_length(shared_scp, a_big_ct_in_runscp, tmp_path, max_pdu):
    src = pydicom.dcmread(a_big_ct_in_runscp, stop_before_pixels=True)
    out = tmp_path / "moved"
    out.mkdir()
    if max_pdu and max_pdu <= 131072:
        dest_port = free_port()
        proc, recorder = _storescp(dest_port, max_pdu, out), None
        wait_until(lambda: port_accepts(dest_port), 10, message="storescp")
    else:
        proc = None
        recorder = CapturingScp(ae_title="DEST", max_pdu=max_pdu, transfer_syntaxes=[ExplicitVRLittleEndian]).start()
        dest_port = recorder.port
    try:
        with pdu_recording_relay(dest_port) as (port, record):
            Peer.objects.create(name="dest", ae_title="DEST", host="127.0.0.1", port=port, is_move_destination=True)
            shared_scp.wait_for_peers()
            keys = ("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={src.StudyInstanceUID}")
            result = shared_scp.qr("movescu", *keys, calling=VIEWER, options=["-aem", "DEST"])
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        else:
            recorder.stop()
    ours = record.pdata_lengths("to_target")
    assert max(ours) == largest_pdata(ours, max_pdu), f"our C-STORE went in PDUs up to {max(ours)}"
    if recorder is None:
        received = {str(pydicom.dcmread(p).SOPInstanceUID): dataset_bytes(p.read_bytes()) for p in out.iterdir()}
    else:
        received = recorder.datasets
    assert received == {str(src.SOPInstanceUID): dataset_bytes(a_big_ct_in_runscp.read_bytes())}
