"""The DICOM handler rules, called as plain functions: no socket, no runscp.

Access (who may associate, store, query, get, move, and where to), C-STORE
(`answer_store`), C-FIND (`answer_find`, Modality Worklist through the
responder worklist registers), C-GET/C-MOVE planning (`plan_get`,
`plan_move`).  The end-to-end tests with DCMTK and Orthanc check that
runscp calls these; here each rule is checked once, cheaply.

Personas: a modality that may store (`MODALITY`), a viewer that may query and
retrieve (`VIEWER`), a workstation that is a C-MOVE destination only
(`WORKSTATION`), and a stranger nobody configured (`STRANGER`).
"""

import dataclasses
import functools
import os

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnodes.archive import storage
from dicomnodes.archive.index import IndexWriter
from dicomnodes.archive.ingest import placement
from dicomnodes.archive.storage import instance_path
from dicomnodes.dimse import Caller, Status
from dicomnodes.models import DicomServerSettings, Instance, Peer
from dicomnodes.scp.access import AccessPolicy
from dicomnodes.scp.handlers import answer_store, check_association
from dicomnodes.scp.qr import Plan, Refusal, answer_find, plan_get, plan_move
from dicomnodes.scp.server import load_config
from dicomnodes.scp.sinks import StoreSink
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.transfer import dataset_bytes
from worklist.models import WorklistItem, WorklistQuery, WorklistSettings

pytestmark = [pytest.mark.django_db]

MODALITY = Caller("MODALITY1", "10.0.0.5")
VIEWER = Caller("VIEWER", "10.0.0.6")
STRANGER = Caller("STRANGER", "10.0.0.9")
STUDY_FIND = "STUDY"


@pytest.fixture
def peers(db):
    Peer.objects.create(name="CT", ae_title="MODALITY1", host="10.0.0.5", port=104, may_store=True)
    Peer.objects.create(
        name="Viewer", ae_title="VIEWER", host="10.0.0.6", port=104, may_store=False, may_query=True, may_retrieve=True
    )
    Peer.objects.create(
        name="Workstation", ae_title="WORKSTATION", host="10.0.0.7", port=11113, is_move_destination=True
    )


@pytest.fixture
def config(peers):
    """The runscp configuration as loaded from the settings (unknown AEs refused)."""
    row = DicomServerSettings.load()
    row.unknown_ae_may_echo_and_store = False
    row.save()
    return load_config(port=0)


@pytest.fixture
def study(data_dir, tmp_path):
    """Three CT images of one study in the archive, series 1 (2 images) and 2 (1 image)."""
    study_uid = "1.2.826.0.1.3680043.8.498.7001"
    one = make_ct_series(tmp_path / "s1", 2, study_uid=study_uid, series_number=1)
    two = make_ct_series(tmp_path / "s2", 1, study_uid=study_uid, series_number=2)
    archive_files([*one, *two])
    return study_uid


def identifier(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# --- access ---------------------------------------------------------------------------------------


def test_a_stranger_may_not_associate_when_unknown_aes_are_refused(config):
    assert not config.access.may_associate(STRANGER.ae_title, STRANGER.address)
    assert config.access.may_associate(MODALITY.ae_title, MODALITY.address)


def test_unknown_aes_may_echo_and_store_only_when_the_policy_says_so(config):
    lenient = dataclasses.replace(config.access, unknown_may_echo_and_store=True)
    assert lenient.may_echo(STRANGER.ae_title, STRANGER.address)
    assert lenient.may_store(STRANGER.ae_title, STRANGER.address)
    assert not lenient.may_query(STRANGER.ae_title, STRANGER.address)
    assert not config.access.may_echo(STRANGER.ae_title, STRANGER.address)


def test_a_caller_is_accepted_when_it_may_use_one_of_the_services_it_proposes(config):
    verification, study_find = "1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.2.2.1"
    workstation = ("WORKSTATION", "10.0.0.7")
    assert config.access.may_associate(*workstation, [verification])  # a known peer may echo
    assert not config.access.may_associate(*workstation, [study_find])  # but not query
    assert config.access.may_associate(VIEWER.ae_title, VIEWER.address, [study_find])


def test_a_peer_that_checks_its_host_is_known_only_from_that_host(db):
    Peer.objects.create(name="Checked", ae_title="CHECKED", host="127.0.0.1", port=104, check_host=True, may_store=True)
    policy = dataclasses.replace(AccessPolicy.load(DicomServerSettings.load()), unknown_may_echo_and_store=False)
    assert policy.may_store("CHECKED", "127.0.0.1")
    assert policy.may_store("CHECKED", "::ffff:127.0.0.1")  # IPv4 on our dual-stack socket
    assert not policy.may_store("CHECKED", "10.9.9.9")


def test_the_move_destination_on_the_callers_own_host_wins(db):
    Peer.objects.create(name="A", ae_title="DEST", host="10.1.1.1", port=104, is_move_destination=True)
    Peer.objects.create(name="B", ae_title="DEST", host="127.0.0.1", port=105, is_move_destination=True)
    Peer.objects.create(name="C", ae_title="NOTDEST", host="127.0.0.1", port=106)
    policy = AccessPolicy.load(DicomServerSettings.load())
    assert policy.move_destination("DEST", "127.0.0.1").port == 105
    assert policy.move_destination("DEST", "10.2.2.2").port == 104  # first by name
    assert policy.move_destination("NOTDEST", "127.0.0.1") is None


def test_an_association_to_our_title_or_a_publishing_variant_is_accepted(config):
    storage = ["1.2.840.10008.5.1.4.1.1.2"]
    for called in ("PACS", "PACS_E", "PACS_P", "PACS_TE", "PACS_TP"):
        assert check_association(called, MODALITY, storage, config=config) is None


def test_an_association_to_another_called_title_is_rejected_as_called_ae_not_recognised(config):
    refusal = check_association("PACS_X", MODALITY, ["1.2.840.10008.5.1.4.1.1.2"], config=config)
    assert refusal == ((1, 1, 7), "called AE title not recognised")  # rejected-permanent, service user


def test_a_caller_that_may_use_none_of_its_services_is_rejected_as_calling_ae_not_recognised(config):
    study_find = "1.2.840.10008.5.1.4.1.2.2.1"
    assert check_association("PACS", MODALITY, [study_find], config=config) == (
        (1, 1, 3),
        "calling AE title not recognised",
    )
    assert check_association("PACS", STRANGER, ["1.2.840.10008.1.1"], config=config)[1] == (
        "calling AE title not recognised"
    )


# --- C-STORE ----------------------------------------------------------------------------------------


@pytest.fixture
def writer(transactional_db):
    writer = IndexWriter(on_studies_created=None, on_associations_closed=None).start()
    yield writer
    writer.stop()


def _dataset_bytes(path):
    """What arrives in a C-STORE: the dataset in its transfer syntax, no file meta."""
    return dataset_bytes(path.read_bytes()), dcmread(path)


def _store(config, writer, raw, ds, caller=MODALITY, **overrides):
    args = dict(
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        caller=caller,
        called_ae="PACS",
        association_id=None,
        config=config,
        writer=writer,
    )
    args.update(overrides)
    return answer_store(raw, ExplicitVRLittleEndian, **args)


def test_a_modality_stores_an_image_as_received_and_it_is_indexed(config, writer, data_dir, tmp_path):
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm"))
    code, comment, uid = _store(config, writer, raw, ds)
    assert (code, comment, uid) == (Status.SUCCESS, "", ds.SOPInstanceUID)
    assert instance_path(uid).read_bytes().endswith(raw)  # the bytes as they came
    assert Instance.objects.get(sop_instance_uid=uid).series.study.patient_id == "PAT001"


def test_a_file_that_cannot_be_synced_is_neither_kept_nor_indexed_and_the_sender_is_told(
    config, writer, data_dir, tmp_path, monkeypatch
):
    """The row is handed to the writer while the file syncs: when the sync
    fails, both go (the sender got no Success and sends it again)."""
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm"))

    def failing_sync(folder):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(storage, "_fsync_dir", failing_sync)  # a disk that fails: not cheap to have for real
    code, comment, _ = _store(config, writer, raw, ds)
    assert (code, comment) == (Status.OUT_OF_RESOURCES, "Out of resources: Input/output error")
    assert not instance_path(ds.SOPInstanceUID).exists()
    assert not Instance.objects.exists()
    monkeypatch.undo()
    assert _store(config, writer, raw, ds)[0] == Status.SUCCESS  # sent again, stored
    assert Instance.objects.get().series.num_instances == 1


def test_a_stranger_may_not_store_and_nothing_is_written(config, writer, data_dir, tmp_path):
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm"))
    code, comment, _ = _store(config, writer, raw, ds, caller=STRANGER)
    assert code == Status.NOT_AUTHORISED
    assert comment == "STRANGER may not store here"
    assert not instance_path(ds.SOPInstanceUID).exists()
    assert not Instance.objects.exists()


def test_a_viewer_that_may_not_store_is_refused(config, writer, data_dir, tmp_path):
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm"))
    assert _store(config, writer, raw, ds, caller=VIEWER)[0] == Status.NOT_AUTHORISED


def test_bytes_that_are_no_dataset_are_not_understood_and_kept_in_quarantine(config, writer, data_dir):
    code, comment, _ = _store(
        config, writer, b"\x08\x00\x18\x00UI\xff\xff", Dataset(), sop_class_uid="1.2.3", sop_instance_uid="1.2.3.4"
    )
    assert code == Status.CANNOT_UNDERSTAND
    assert comment.startswith("Cannot understand")
    assert [p.read_bytes().endswith(b"\x08\x00\x18\x00UI\xff\xff") for p in (data_dir / "quarantine").iterdir()] == [
        True
    ]


def test_a_duplicate_is_acknowledged_and_kept_once(config, writer, data_dir, tmp_path):
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm"))
    assert _store(config, writer, raw, ds)[0] == Status.SUCCESS
    assert _store(config, writer, raw, ds)[0] == Status.SUCCESS
    assert Instance.objects.count() == 1


# --- C-STORE: a data set written into its own file as it arrives ---------------------------------

FRAGMENT = 16372  # DCMTK's fragments at its default 16 KB maximum PDU


def _arriving(raw, ds, caller=MODALITY, *, uid=None, upto=None):
    """A StoreSink as runscp opens one for a C-STORE-RQ naming `uid` (the
    data set's own by default), fed `raw` (up to `upto` bytes) in DCMTK's
    fragments."""
    where = functools.partial(
        placement,
        str(ds.SOPClassUID),
        uid or str(ds.SOPInstanceUID),
        ExplicitVRLittleEndian,
        calling_ae=caller.ae_title,
        called_ae="PACS",
    )
    sink = StoreSink(placement=where)
    view = memoryview(raw)[:upto]
    for offset in range(0, len(view), FRAGMENT):
        sink(view[offset : offset + FRAGMENT])
    return sink


def _store_arrived(config, writer, sink, ds, caller=MODALITY, *, uid=None):
    """What runscp does once the data set is complete (acceptor._store)."""
    assert sink.finish() is None
    try:
        with sink.contents() as (raw, spool):
            return _store(
                config, writer, raw, ds, caller=caller, spool=spool, sop_instance_uid=uid or str(ds.SOPInstanceUID)
            )
    finally:
        sink.close()


def _descriptor_target(fd):
    return os.readlink(f"/proc/self/fd/{fd}")


def test_a_large_data_set_is_written_into_its_own_file_while_it_arrives_and_linked_not_copied(
    config, writer, data_dir, tmp_path
):
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm", size=256))  # 128 KiB of pixels
    path = instance_path(ds.SOPInstanceUID)
    sink = _arriving(raw, ds, upto=len(raw) // 2)
    # Half arrived: no copy of it in memory; a nameless file in the instance's folder, the half in it.
    assert sink.memory is None
    fd = sink.spool.fileno()
    assert _descriptor_target(fd).startswith(f"{path.parent}/#") and _descriptor_target(fd).endswith("(deleted)")
    meta = storage.file_meta_bytes(
        ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, source_ae="MODALITY1", receiving_ae="PACS"
    )
    half = len(raw) // 2
    assert os.fstat(fd).st_size == len(meta) + half  # (fileno() flushed the write buffer)
    assert not path.exists()
    view = memoryview(raw)
    for offset in range(half, len(raw), FRAGMENT):
        sink(view[offset : offset + FRAGMENT])
    inode = os.fstat(fd).st_ino

    assert _store_arrived(config, writer, sink, ds) == (Status.SUCCESS, "", ds.SOPInstanceUID)
    assert path.read_bytes() == meta + raw
    assert path.stat().st_ino == inode  # the file it was written into, linked under its name
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert dcmread(path).PatientID == "PAT001"
    assert Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID).file_size == len(meta) + len(raw)
    assert list(path.parent.iterdir()) == [path]


def test_a_streamed_data_set_naming_another_instance_than_its_request_is_stored_under_its_own(
    config, writer, data_dir, tmp_path
):
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm", size=256))
    asked = "1.2.826.0.1.3680043.8.498.4242"
    sink = _arriving(raw, ds, uid=asked)
    assert _descriptor_target(sink.spool.fileno()).startswith(f"{instance_path(asked).parent}/#")

    assert _store_arrived(config, writer, sink, ds, uid=asked) == (Status.SUCCESS, "", ds.SOPInstanceUID)
    assert not instance_path(asked).exists()
    stored = dcmread(instance_path(ds.SOPInstanceUID))
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID  # the file meta agrees with the data set
    assert instance_path(ds.SOPInstanceUID).read_bytes().endswith(raw)
    assert list(instance_path(asked).parent.iterdir()) == []  # the spool had no name there


def test_a_streamed_duplicate_keeps_the_first_file(config, writer, data_dir, tmp_path):
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm", size=256))
    assert _store_arrived(config, writer, _arriving(raw, ds), ds)[0] == Status.SUCCESS
    first = instance_path(ds.SOPInstanceUID).stat()
    assert _store_arrived(config, writer, _arriving(raw, ds), ds)[0] == Status.SUCCESS
    assert instance_path(ds.SOPInstanceUID).stat().st_ino == first.st_ino
    assert Instance.objects.count() == 1
    assert list(instance_path(ds.SOPInstanceUID).parent.iterdir()) == [instance_path(ds.SOPInstanceUID)]


def test_a_streamed_data_set_replaces_the_stored_one_when_overwriting(config, writer, data_dir, tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.4343"
    first, ds = _dataset_bytes(make_ct(tmp_path / "a.dcm", size=256, sop_uid=uid, patient_name="First^Sent"))
    second, ds2 = _dataset_bytes(make_ct(tmp_path / "b.dcm", size=256, sop_uid=uid, patient_name="Second^Sent"))
    overwriting = dataclasses.replace(config, overwrite=True)
    assert _store_arrived(overwriting, writer, _arriving(first, ds), ds)[0] == Status.SUCCESS
    assert _store_arrived(overwriting, writer, _arriving(second, ds2), ds2)[0] == Status.SUCCESS
    assert instance_path(uid).read_bytes().endswith(second)
    assert str(dcmread(instance_path(uid)).PatientName) == "Second^Sent"
    assert list(instance_path(uid).parent.iterdir()) == [instance_path(uid)]


def test_without_nameless_files_a_streamed_data_set_is_spooled_and_copied(
    config, writer, data_dir, tmp_path, monkeypatch
):
    """A file system without O_TMPFILE: the spool is an anonymous temporary
    in the storage folder, and the store copies its bytes."""
    monkeypatch.setattr(storage._NAMELESS, "usable", False)
    raw, ds = _dataset_bytes(make_ct(tmp_path / "ct.dcm", size=256))
    sink = _arriving(raw, ds)
    assert _descriptor_target(sink.spool.fileno()).startswith(f"{data_dir / 'storage'}/")
    inode = os.fstat(sink.spool.fileno()).st_ino

    assert _store_arrived(config, writer, sink, ds)[0] == Status.SUCCESS
    path = instance_path(ds.SOPInstanceUID)
    assert path.read_bytes().endswith(raw)
    assert path.stat().st_ino != inode
    assert dcmread(path).file_meta.SourceApplicationEntityTitle == "MODALITY1"


def test_streamed_bytes_that_are_no_data_set_go_to_the_quarantine_and_leave_no_file(config, writer, data_dir):
    garbage = b"\x08\x00\x18\x00UI\xff\xff" + bytes(200_000)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.4444"
    sink = _arriving(garbage, ds)
    assert sink.spool is not None

    code, comment, _ = _store_arrived(config, writer, sink, ds)
    assert code == Status.CANNOT_UNDERSTAND
    assert list(instance_path(ds.SOPInstanceUID).parent.iterdir()) == []
    assert [p.read_bytes().endswith(garbage) for p in (data_dir / "quarantine").iterdir()] == [True]
    assert not Instance.objects.exists()


# --- C-FIND -----------------------------------------------------------------------------------------


def test_a_caller_that_may_not_query_gets_0124_with_a_comment(config, study):
    answers = list(
        answer_find(identifier("STUDY", StudyInstanceUID=""), model=STUDY_FIND, caller=MODALITY, config=config)
    )
    assert len(answers) == 1
    assert answers[0][0].Status == Status.NOT_AUTHORISED
    assert answers[0][0].ErrorComment == "MODALITY1 may not query"


def test_a_study_find_yields_one_pending_answer_per_match(config, study):
    answers = list(
        answer_find(
            identifier("SERIES", StudyInstanceUID=study, SeriesNumber=""),
            model=STUDY_FIND,
            caller=VIEWER,
            config=config,
        )
    )
    assert [code for code, _ in answers] == [Status.PENDING, Status.PENDING]
    assert sorted(int(ds.SeriesNumber) for _, ds in answers) == [1, 2]
    assert {ds.RetrieveAETitle for _, ds in answers} == {config.ae_title}


def test_a_bad_identifier_is_refused_with_a900(config, study):
    answers = list(answer_find(identifier("SERIES"), model=STUDY_FIND, caller=VIEWER, config=config))
    assert [(ds.Status, ds.ErrorComment) for ds, _ in answers] == [
        (Status.IDENTIFIER_DOES_NOT_MATCH, "missing unique key StudyInstanceUID")
    ]


def test_a_cancel_stops_the_answers_with_fe00(config, study):
    asked = iter([False, True])
    answers = list(
        answer_find(
            identifier("SERIES", StudyInstanceUID=study, SeriesInstanceUID=""),
            model=STUDY_FIND,
            caller=VIEWER,
            config=config,
            cancelled=lambda: next(asked),
        )
    )
    assert [code for code, _ in answers] == [Status.PENDING, Status.CANCEL]


def test_a_model_nobody_answers_is_refused(config):
    answers = list(answer_find(identifier("STUDY"), model="NOSUCH", caller=VIEWER, config=config))
    assert answers[0][0].Status == Status.UNABLE_TO_PROCESS


def test_the_worklist_app_answers_modality_worklist_finds_and_logs_them(config):
    WorklistItem.objects.create(patient_id="P1", patient_name="Doe^Jane", accession_number="A1", modality="CT")
    WorklistItem.objects.create(patient_id="P2", patient_name="Roe^Rick", accession_number="A2", modality="MR")
    settings = WorklistSettings.load()
    settings.message_logging = True
    settings.save()
    query = Dataset()
    query.PatientName = "DOE*"
    query.AccessionNumber = ""
    answers = list(answer_find(query, model="WORKLIST", caller=VIEWER, config=config))
    assert [(code, ds.AccessionNumber) for code, ds in answers] == [(Status.PENDING, "A1")]
    log = WorklistQuery.objects.get()
    assert (log.calling_ae, log.matches, log.status) == ("VIEWER", 1, "0000")


# --- C-GET and C-MOVE ---------------------------------------------------------------------------------


def test_a_get_plan_lists_the_study_in_series_and_instance_order(config, study):
    plan = plan_get(identifier("STUDY", StudyInstanceUID=study), model="STUDY", caller=VIEWER, config=config)
    assert isinstance(plan, Plan)
    numbers = [
        Instance.objects.filter(sop_instance_uid=t.sop_instance_uid).values_list("series__series_number", flat=True)[0]
        for t in plan.targets
    ]
    assert numbers == [1, 1, 2]


def test_a_modality_may_not_get(config, study):
    plan = plan_get(identifier("STUDY", StudyInstanceUID=study), model="STUDY", caller=MODALITY, config=config)
    assert plan == Refusal(Status.NOT_AUTHORISED, "MODALITY1 may not retrieve")


def test_a_get_without_the_unique_key_is_refused_with_a900(config, study):
    plan = plan_get(identifier("SERIES", StudyInstanceUID=study), model="STUDY", caller=VIEWER, config=config)
    assert plan == Refusal(Status.IDENTIFIER_DOES_NOT_MATCH, "SeriesInstanceUID is required at level SERIES")


def test_a_patient_level_get_is_refused_in_the_study_root_model(config, study):
    plan = plan_get(identifier("PATIENT", PatientID="PAT001"), model="STUDY", caller=VIEWER, config=config)
    assert plan == Refusal(Status.IDENTIFIER_DOES_NOT_MATCH, "Query/Retrieve Level PATIENT not valid here")


def test_a_move_plan_names_the_destination_and_proposes_contexts_for_what_is_sent(config, study):
    plan = plan_move(
        identifier("STUDY", StudyInstanceUID=study),
        model="STUDY",
        destination_ae="WORKSTATION",
        caller=VIEWER,
        config=config,
    )
    assert (plan.destination.host, plan.destination.port) == ("10.0.0.7", 11113)
    assert len(plan.targets) == 3
    assert {str(cx.abstract_syntax) for cx in plan.contexts} == {"1.2.840.10008.5.1.4.1.1.2"}  # CT Image Storage


def test_a_move_to_an_unknown_destination_is_a801_naming_it(config, study):
    plan = plan_move(
        identifier("STUDY", StudyInstanceUID=study),
        model="STUDY",
        destination_ae="NOWHERE",
        caller=VIEWER,
        config=config,
    )
    assert plan == Refusal(Status.MOVE_DESTINATION_UNKNOWN, "Move destination NOWHERE unknown")


def test_a_stranger_may_not_move_even_to_a_known_destination(config, study):
    plan = plan_move(
        identifier("STUDY", StudyInstanceUID=study),
        model="STUDY",
        destination_ae="WORKSTATION",
        caller=STRANGER,
        config=config,
    )
    assert plan == Refusal(Status.NOT_AUTHORISED, "STRANGER may not retrieve")
