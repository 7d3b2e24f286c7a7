"""runscp's own runtime (issue 14) at the PDU level: peers that frame
messages their own way (command and data in one PDU, a command set cut
across PDUs), C-CANCEL during C-FIND and C-MOVE, and an A-ABORT in the
middle of a data set (nothing indexed, no temporary file left).

The raw peers negotiate with our `negotiation.request` and then write
every PDU themselves (tests/support/rawdata.py `raw_pdu_association`).
"""

import os
import struct
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicomnodes.archive.spool import STREAM_AT
from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance, Peer
from dicomnodes.net import commandset as cs
from dicomnodes.net.pdata import (
    A_RELEASE_RP,
    COMMAND,
    LAST,
    P_DATA_TF,
    RELEASE_RQ,
    SOURCE_SERVICE_USER,
    abort_pdu,
    pdata_header,
    pdata_pdus,
)
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.processes import wait_until
from tests.support.rawdata import explicit_element, identifying, raw_pdu_association
from tests.support.transfer import CapturingScp, dataset_bytes

VIEWER = "VIEWER1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def pdv(context_id, fragment, *, is_command, is_last):
    control = (COMMAND if is_command else 0) | (LAST if is_last else 0)
    return struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment


def pdata(*pdvs):
    body = b"".join(pdvs)
    return struct.pack(">BxL", P_DATA_TF, len(body)) + body


def store_rq(sop_class, sop_instance, message_id=1):
    return cs.encode(
        CommandField=cs.C_STORE_RQ,
        MessageID=message_id,
        AffectedSOPClassUID=sop_class,
        Priority=cs.PRIORITY_MEDIUM,
        CommandDataSetType=cs.DATA_SET_PRESENT,
        AffectedSOPInstanceUID=sop_instance,
    )


def release(raw):
    raw.send(RELEASE_RQ)
    assert raw.read_pdu()[0] == A_RELEASE_RP


# --- peers that frame their own way ----------------------------------------------------


def _one_pdu(cid, command, data):
    return [pdata(pdv(cid, command, is_command=True, is_last=True), pdv(cid, data, is_command=False, is_last=True))]


def _command_across_three_pdus(cid, command, data):
    cuts = [0, 5, 37, len(command)]  # one cut inside the group length, one inside an element
    pdus = [pdata(pdv(cid, command[a:b], is_command=True, is_last=b == len(command))) for a, b in zip(cuts, cuts[1:])]
    return pdus + [
        b"".join(header + bytes(payload) for header, payload in pdata_pdus(cid, data, is_command=False, max_pdu=4096))
    ]


def _many_pdvs_in_one_pdu(cid, command, data):
    """The command in 2-byte fragments, the data in 1,000-byte ones, all one PDU."""
    pieces = [
        pdv(cid, command[i : i + 2], is_command=True, is_last=i + 2 >= len(command)) for i in range(0, len(command), 2)
    ]
    pieces += [
        pdv(cid, data[i : i + 1000], is_command=False, is_last=i + 1000 >= len(data)) for i in range(0, len(data), 1000)
    ]
    return [pdata(*pieces)]


FRAMINGS = {
    "command and data in one PDU": _one_pdu,
    "command set cut across three PDUs": _command_across_three_pdus,
    "every fragment a PDV of one PDU": _many_pdvs_in_one_pdu,
}


@pytest.mark.parametrize("framing", FRAMINGS)
def test_a_store_framed_by_the_peer_is_answered_success_and_indexed(shared_scp, tmp_path, framing):
    src = make_ct(tmp_path / "ct.dcm", size=96)
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    data = dataset_bytes(src.read_bytes())
    with raw_pdu_association(shared_scp.port, [CTImageStorage]) as raw:
        cid = raw.context_id(CTImageStorage)
        for pdu in FRAMINGS[framing](cid, store_rq(CTImageStorage, uid, message_id=11), data):
            raw.send(pdu)
        rsp, _ = raw.read_message()
        release(raw)
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (cs.C_STORE_RSP, 11, 0x0000)
    assert rsp.AffectedSOPInstanceUID == uid
    assert Instance.objects.filter(sop_instance_uid=uid).exists()


def test_two_stores_in_one_pdu_are_both_answered_in_order(shared_scp, tmp_path):
    """A peer that does not wait for the first C-STORE-RSP before the second
    C-STORE-RQ, both messages in one P-DATA-TF."""
    sources = [make_ct(tmp_path / f"ct{n}.dcm", size=32) for n in range(2)]
    uids = [str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID) for src in sources]
    with raw_pdu_association(shared_scp.port, [CTImageStorage]) as raw:
        cid = raw.context_id(CTImageStorage)
        pdvs = []
        for message_id, (uid, src) in enumerate(zip(uids, sources), start=21):
            pdvs.append(pdv(cid, store_rq(CTImageStorage, uid, message_id), is_command=True, is_last=True))
            pdvs.append(pdv(cid, dataset_bytes(src.read_bytes()), is_command=False, is_last=True))
        raw.send(pdata(*pdvs))
        answers = [raw.read_message()[0] for _ in uids]
        release(raw)
    assert [(a.MessageIDBeingRespondedTo, a.Status, a.AffectedSOPInstanceUID) for a in answers] == [
        (21, 0x0000, uids[0]),
        (22, 0x0000, uids[1]),
    ]
    assert Instance.objects.filter(sop_instance_uid__in=uids).count() == 2


# --- C-CANCEL -----------------------------------------------------------------------------


@pytest.fixture
def many_instances(shared_scp, tmp_path):
    """300 tiny CT images of one series in runscp; a viewer that may query and retrieve."""
    files = make_ct_series(tmp_path / "many", 300, size=8, patient_id="MANY")
    assert shared_scp.store(tmp_path / "many").returncode == 0
    Peer.objects.create(name="viewer", ae_title=VIEWER, host="127.0.0.1", may_query=True, may_retrieve=True)
    shared_scp.wait_until_allowed(VIEWER, "find")
    return pydicom.dcmread(files[0], stop_before_pixels=True)


def _associate(port, *contexts):
    ae = AE(ae_title=VIEWER)
    for context in (*contexts, Verification):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    return assoc


def _context_id(assoc, sop_class):
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)


def test_c_cancel_during_c_find_ends_it_with_fe00_and_the_association_goes_on(shared_scp, many_instances):
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = many_instances.StudyInstanceUID
    query.SeriesInstanceUID = many_instances.SeriesInstanceUID
    query.SOPInstanceUID = ""
    assoc = _associate(shared_scp.port, StudyRootQueryRetrieveInformationModelFind)

    def cancel_once_asked(event):
        # Once the identifier (the only last data fragment we send) has gone;
        # not after the first answer: runscp sends the 300 answers (tens of
        # microseconds each) before pynetdicom has decoded the first.
        items = getattr(event.pdu, "presentation_data_value_items", [])
        if any(item.data[0] == LAST for item in items):
            assoc.send_c_cancel(7, _context_id(assoc, StudyRootQueryRetrieveInformationModelFind))

    assoc.bind(evt.EVT_PDU_SENT, cancel_once_asked)
    try:
        statuses = []
        for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=7):
            statuses.append(status.Status)
        echo = assoc.send_c_echo()
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00, f"final status 0x{statuses[-1]:04X}"
    assert set(statuses[:-1]) == {0xFF00}
    assert len(statuses) - 1 < 300, "the answers stopped before the last match"
    assert echo.Status == 0x0000


@pytest.fixture
def slow_destination(shared_scp, many_instances):
    """DEST, a C-MOVE destination taking 20 ms a store, and the study-level
    identifier of the 300 instances."""
    destination = CapturingScp(ae_title="DEST", delay=0.02).start()
    Peer.objects.create(name="dest", ae_title="DEST", host="127.0.0.1", port=destination.port, is_move_destination=True)
    shared_scp.wait_for_peers()
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = many_instances.StudyInstanceUID
    yield destination, query
    destination.stop()


def test_c_cancel_during_c_move_ends_it_with_fe00_and_counts(shared_scp, slow_destination):
    destination, query = slow_destination
    assoc = _associate(shared_scp.port, StudyRootQueryRetrieveInformationModelMove)
    try:
        responses = []
        for status, _ in assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove, msg_id=9):
            responses.append(status)
            if len(responses) == 1:
                assoc.send_c_cancel(9, _context_id(assoc, StudyRootQueryRetrieveInformationModelMove))
        echo = assoc.send_c_echo()
    finally:
        assoc.release()
    final = responses[-1]
    assert final.Status == 0xFE00, f"final status 0x{final.Status:04X}"
    completed = final.NumberOfCompletedSuboperations
    assert 1 <= completed < 300
    assert final.NumberOfRemainingSuboperations == 300 - completed - final.NumberOfFailedSuboperations
    assert len(destination.received) == completed, "the counts say what the destination got"
    assert echo.Status == 0x0000


def test_an_abort_during_c_move_stops_the_sub_operations(shared_scp, slow_destination):
    destination, query = slow_destination
    assoc = _associate(shared_scp.port, StudyRootQueryRetrieveInformationModelMove)
    for _ in assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove):
        assoc.abort()
        break
    assert destination.associations == 1
    wait_until(lambda: destination.concurrent == 0, 10, message="runscp to end its association to DEST")
    assert len(destination.received) < 50, "the sub-operations stopped with the association"
    assert shared_scp.echo().returncode == 0


def test_c_cancel_during_c_get_ends_it_with_fe00_and_counts(shared_scp, many_instances):
    """The C-CANCEL comes while runscp waits for the C-RSP of a C-STORE
    sub-operation (the getter takes 20 ms a store), as it mostly will."""
    received = []

    def on_store(event):
        time.sleep(0.02)
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title=VIEWER)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        shared_scp.port,
        ae_title="PACS",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = many_instances.StudyInstanceUID
    try:
        responses = []
        for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet, msg_id=5):
            responses.append(status)
            if len(responses) == 1:
                assoc.send_c_cancel(5, _context_id(assoc, StudyRootQueryRetrieveInformationModelGet))
        echo = assoc.send_c_echo()
    finally:
        assoc.release()
    final = responses[-1]
    assert final.Status == 0xFE00, (
        f"final status 0x{final.Status:04X} after {final.NumberOfCompletedSuboperations} sub-operations"
    )
    completed = final.NumberOfCompletedSuboperations
    assert 1 <= completed < 300
    assert len(received) == completed
    assert echo.Status == 0x0000


# --- A-ABORT in the middle of a data set ---------------------------------------------------


def storage_fds(scp):
    """Files of runscp's under its storage folder that it holds open (a
    spool file is anonymous: '/…/storage/#123 (deleted)')."""
    storage = str(scp.data_dir / "storage")
    fds = Path(f"/proc/{scp.proc.pid}/fd")
    links = []
    for fd in fds.iterdir():
        try:
            links.append(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile
    return [link for link in links if link.startswith(storage)]


def files_under(folder: Path):
    return sorted(str(p) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.mark.parametrize(
    "size", [48 * 1024, 256 * 1024, 6 * 2**20], ids=["in memory", "into its own file", "into its own file past 4 MiB"]
)
def test_an_abort_in_the_middle_of_a_data_set_leaves_nothing(shared_scp, size):
    uid, head = identifying()
    data = head + explicit_element(0x7FE0, 0x0010, b"OW", b"\x5a" * size)
    half = len(data) // 2
    storage = shared_scp.data_dir / "storage"
    before = files_under(storage)
    with raw_pdu_association(shared_scp.port, [SECONDARY_CAPTURE]) as raw:
        cid = raw.context_id(SECONDARY_CAPTURE)
        raw.send(pdata(pdv(cid, store_rq(SECONDARY_CAPTURE, uid), is_command=True, is_last=True)))
        for offset in range(0, half, 65530):
            fragment = data[offset : min(offset + 65530, half)]
            raw.send(pdata_header(cid, len(fragment), is_command=False, is_last=False), fragment)
        if half > STREAM_AT:
            wait_until(lambda: storage_fds(shared_scp), 10, message="runscp to write the data set to a file")
        raw.send(abort_pdu(source=SOURCE_SERVICE_USER))
    wait_until(lambda: "aborted" in shared_scp.log(), 10, message="runscp to log the abort")
    wait_until(lambda: not storage_fds(shared_scp), 10, message="runscp to close the spool file")
    assert not Instance.objects.filter(sop_instance_uid=uid).exists()
    assert files_under(storage) == before, "no file, temporary or not, was left in the storage folder"
    assert shared_scp.echo().returncode == 0


def test_a_large_data_set_goes_into_its_own_file_while_it_arrives(shared_scp):
    """Past STREAM_AT the data set is written, as it arrives, into a nameless
    file in the instance's own folder, which becomes its file."""
    uid, head = identifying()
    data = head + explicit_element(0x7FE0, 0x0010, b"OW", b"\x5a" * 2**20)
    path = instance_path(uid, shared_scp.data_dir / "storage")
    with raw_pdu_association(shared_scp.port, [SECONDARY_CAPTURE]) as raw:
        cid = raw.context_id(SECONDARY_CAPTURE)
        raw.send(pdata(pdv(cid, store_rq(SECONDARY_CAPTURE, uid), is_command=True, is_last=True)))
        pdus = list(pdata_pdus(cid, data, is_command=False, max_pdu=16384))
        for header, payload in pdus[: len(pdus) // 2]:
            raw.send(header, payload)
        wait_until(
            lambda: any(fd.startswith(f"{path.parent}/#") for fd in storage_fds(shared_scp)),
            10,
            message="runscp to write the data set into a nameless file in the instance's folder",
        )
        assert not path.exists()
        for header, payload in pdus[len(pdus) // 2 :]:
            raw.send(header, payload)
        rsp, _ = raw.read_message()
        release(raw)
    assert rsp.Status == 0x0000
    assert path.read_bytes().endswith(data)
    assert pydicom.dcmread(path).file_meta.MediaStorageSOPInstanceUID == uid
    assert Instance.objects.filter(sop_instance_uid=uid).exists()
    wait_until(lambda: not storage_fds(shared_scp), 10, message="runscp to close the file")


def test_a_store_naming_another_sop_class_than_its_context_is_refused_0122(shared_scp, tmp_path):
    """PS3.4 B.2.3: a C-STORE-RQ whose SOP class is not its presentation
    context's (here an MR class on the CT context, and one on Verification)
    is refused, SOP class not supported; nothing is stored."""
    src = make_ct(tmp_path / "ct.dcm", size=32)
    uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
    data = dataset_bytes(src.read_bytes())
    mr = "1.2.840.10008.5.1.4.1.1.4"
    with raw_pdu_association(shared_scp.port, [CTImageStorage, Verification]) as raw:
        answers = []
        for message_id, (context, named) in enumerate(
            [(CTImageStorage, mr), (Verification, Verification), (CTImageStorage, CTImageStorage)], start=31
        ):
            cid = raw.context_id(context)
            for pdu in _one_pdu(cid, store_rq(named, uid, message_id), data):
                raw.send(pdu)
            answers.append(raw.read_message()[0])
            if message_id < 33:
                assert not Instance.objects.filter(sop_instance_uid=uid).exists()
        release(raw)
    assert [(a.MessageIDBeingRespondedTo, a.Status) for a in answers] == [(31, 0x0122), (32, 0x0122), (33, 0x0000)]
    assert Instance.objects.filter(sop_instance_uid=uid).exists()
