"""runscp C-STORE with DCMTK storescu: what arrives is stored as received and indexed."""

import re
import subprocess
import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import (
    AssociationLog,
    AssociationResult,
    DicomServerSettings,
    DuplicatePolicy,
    Instance,
    Patient,
    Peer,
    Series,
    Study,
)
from tests.support.dicomdata import TRANSFER_SYNTAX_CASES, fresh_copy, make_ct, make_ct_series
from tests.support.processes import MODALITY, dcmtk, stored_files, temp_files, wait_until


def dataset_dump(path):
    """dcmdump of the dataset only (our file meta differs from the sender's by design)."""
    out = dcmtk("dcmdump", "+L", path, check=True).stdout
    dataset = out.split("# Dicom-Data-Set", 1)[1]
    # storescu itself re-encodes while sending: it drops Data Set Trailing
    # Padding (FFFC,FFFC) and may turn undefined-length sequences and items
    # into explicit-length ones.  Compare tags, VRs and values only.
    lines = []
    for line in dataset.splitlines():
        line = line.strip()
        if line.startswith(("(fffc,fffc)", "(fffe,e00d)", "(fffe,e0dd)", "# Used TransferSyntax")):
            continue
        line = re.sub(r"\((Sequence|Item) with (un)?defined length #=\d+\)", "(\\1)", line)
        line = re.sub(r"\((Sequence|Item) with explicit length #=\d+\)", "(\\1)", line)
        lines.append(re.sub(r"\s+#.*$", "", line))
    return "\n".join(lines)


def dataset_bytes(path):
    """The bytes after the file meta group."""
    raw = path.read_bytes()
    with open(path, "rb") as f:
        pydicom.filereader.read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        return raw[f.tell() :]


@pytest.mark.archive
def test_it_stores_every_transfer_syntax_as_received(shared_scp, tmp_path):
    for name, ts_uid, options in TRANSFER_SYNTAX_CASES:
        src = fresh_copy(name, tmp_path / "src" / name)
        result = shared_scp.store(src, options=options)
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"
        uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
        row = Instance.objects.get(sop_instance_uid=uid)
        assert row.transfer_syntax_uid == ts_uid, name
        stored = instance_path(uid)
        assert stored.exists(), name
        assert pydicom.dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts_uid
        assert dataset_dump(stored) == dataset_dump(src), f"{name}: content differs"
    assert Instance.objects.count() == len(TRANSFER_SYNTAX_CASES)


def test_uncompressed_datasets_are_written_byte_for_byte(shared_scp, tmp_path):
    src = make_ct(tmp_path / "ct.dcm")
    assert shared_scp.store(src).returncode == 0
    uid = pydicom.dcmread(src).SOPInstanceUID
    assert dataset_bytes(instance_path(uid)) == dataset_bytes(src)


@pytest.mark.archive
def test_it_indexes_patients_studies_series_and_counts(scp, tmp_path):
    study = generate_uid()
    make_ct_series(tmp_path / "a", 5, study_uid=study, series_number=1, patient_id="P1", patient_name="Doe^Jane")
    make_ct_series(tmp_path / "a", 0)  # nothing
    make_ct_series(tmp_path / "b", 3, study_uid=study, series_number=2, patient_id="P1", patient_name="Doe^Jane")
    make_ct_series(tmp_path / "c", 2, patient_id="P2", patient_name="Roe^Richard", accession="ACC9")
    result = scp.store(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert Patient.objects.count() == 2
    s = Study.objects.get(study_instance_uid=study)
    assert (s.num_series, s.num_instances, s.modalities_in_study) == (2, 8, "CT")
    assert (s.patient_id, s.patient_name, s.patient_name_upper) == ("P1", "Doe^Jane", "DOE^JANE")
    assert (s.study_date, s.study_time, s.accession_number) == ("20261127", "101500", "ACC001")
    assert sorted(Series.objects.filter(study=s).values_list("series_number", "num_instances")) == [(1, 5), (2, 3)]
    assert Patient.objects.get(patient_id="P1").num_studies == 1
    assert Study.objects.get(patient_id="P2").accession_number == "ACC9"
    assert set(Instance.objects.values_list("called_ae", "calling_ae")) == {("PACS", MODALITY)}
    assert len(stored_files(scp.data_dir)) == 10


@pytest.mark.archive
def test_it_remembers_the_called_ae_of_every_instance(shared_scp, tmp_path):
    a = make_ct(tmp_path / "a.dcm")
    b = make_ct(tmp_path / "b.dcm")
    assert shared_scp.store(a, called="PACS_TE").returncode == 0
    assert shared_scp.store(b, called="PACS_P").returncode == 0
    called = dict(Instance.objects.values_list("sop_instance_uid", "called_ae"))
    assert called[pydicom.dcmread(a).SOPInstanceUID] == "PACS_TE"
    assert called[pydicom.dcmread(b).SOPInstanceUID] == "PACS_P"


@pytest.mark.archive
def test_non_ascii_names_are_decoded(shared_scp, tmp_path):
    src = make_ct(tmp_path / "greek.dcm", patient_name="Παπαδόπουλος^Νίκος", charset="ISO_IR 126")
    assert shared_scp.store(src).returncode == 0
    study = Study.objects.get()
    assert study.patient_name == "Παπαδόπουλος^Νίκος"
    assert study.patient_name_upper == "ΠΑΠΑΔΌΠΟΥΛΟΣ^ΝΊΚΟΣ"


@pytest.mark.archive
def test_association_log_counts_instances_and_bytes(shared_scp, tmp_path):
    files = make_ct_series(tmp_path / "s", 4)
    assert shared_scp.store(tmp_path / "s").returncode == 0
    wait_until(lambda: AssociationLog.objects.filter(result=AssociationResult.RELEASED).exists())
    row = AssociationLog.objects.get()
    assert (row.instances_received, row.instances_failed) == (4, 0)
    assert row.bytes_received >= sum(f.stat().st_size for f in files) - 4 * 400  # minus file meta
    assert Instance.objects.filter(association=row).count() == 4


@pytest.mark.archive
@pytest.mark.parametrize("policy", [DuplicatePolicy.KEEP_FIRST, DuplicatePolicy.OVERWRITE])
def test_duplicate_policy(start_scp, tmp_path, policy):
    row = DicomServerSettings.load()
    row.duplicate_policy = policy
    row.save()
    # Only a known peer replaces an instance (test_runscp_unknown_senders.py).
    Peer.objects.create(name="CT", ae_title=MODALITY, host="127.0.0.1")
    scp = start_scp()
    uid = generate_uid()
    first = make_ct(tmp_path / "first.dcm", sop_uid=uid, patient_name="First^Copy", study_date="20260101")
    second = make_ct(
        tmp_path / "second.dcm", sop_uid=uid, patient_name="First^Copy", study_date="20260101", accession="ACC2"
    )
    assert scp.store(first).returncode == 0
    assert scp.store(second).returncode == 0, "a duplicate is answered with success"
    stored = pydicom.dcmread(instance_path(uid))
    expected = "ACC001" if policy == DuplicatePolicy.KEEP_FIRST else "ACC2"
    assert stored.AccessionNumber == expected
    assert Instance.objects.count() == 1
    assert Series.objects.get().num_instances == 1
    assert len(stored_files(scp.data_dir)) == 1


@pytest.mark.archive
def test_an_aborted_association_keeps_every_acknowledged_instance(scp, tmp_path):
    files = make_ct_series(tmp_path / "big", 200, size=64)
    proc = subprocess.Popen(
        ["storescu", "-v", "-aet", MODALITY, "-aec", "PACS", "127.0.0.1", str(scp.port), "+sd", str(tmp_path / "big")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )
    # Kill the sender in the middle of the transfer: as soon as it reports
    # its fifth Success (it waits for each answer, so it cannot be near the
    # end of its 200 files by then).
    lines, successes = [], 0
    for line in proc.stdout:
        lines.append(line)
        successes += "Received Store Response (Success)" in line
        if successes == 5:
            proc.kill()
            break
    out = "".join(lines) + proc.communicate()[0]
    acknowledged = out.count("Received Store Response (Success)")
    assert 0 < acknowledged < len(files), "the transfer was interrupted"
    wait_until(lambda: AssociationLog.objects.filter(result=AssociationResult.ABORTED).exists(), 30)
    time.sleep(0.5)
    indexed = Instance.objects.count()
    assert indexed >= acknowledged
    on_disk = stored_files(scp.data_dir)
    assert len(on_disk) == indexed, "every file is indexed and every row has its file"
    for path in on_disk:
        pydicom.dcmread(path)  # complete files only
    assert temp_files(scp.data_dir) == []
    assert Series.objects.get().num_instances == indexed


def test_unparseable_dataset_gets_c000_and_the_next_one_is_stored(scp, tmp_path, monkeypatch):
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import CTImageStorage

    good = make_ct(tmp_path / "good.dcm")
    # A valid file meta, then bytes that are no DICOM dataset at all; sent
    # raw from the file (pynetdicom's chunked mode does not parse it).
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    buf = io.BytesIO()
    write_file_meta_info(buf, meta)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(
        b"\0" * 128 + b"DICM" + buf.getvalue() + b"\x08\x00\x18\x00UI\xff\xffgarbage" + bytes(range(256)) * 4
    )
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="PACS")
    assert assoc.is_established
    try:
        bad_status = assoc.send_c_store(bad)
        good_status = assoc.send_c_store(good)
    finally:
        assoc.release()
    assert bad_status.Status == 0xC000
    assert "Cannot understand" in bad_status.ErrorComment
    assert good_status.Status == 0x0000
    assert Instance.objects.count() == 1
    assert len(list((scp.data_dir / "quarantine").iterdir())) == 1, "the bad bytes are kept for inspection"
    assert "cannot understand the dataset" in scp.log()


def test_store_refused_for_a_known_peer_without_store_right(shared_scp, tmp_path):
    from dicomnodes.models import Peer

    Peer.objects.create(name="viewer", ae_title="VIEWER", host="127.0.0.1", may_store=False, may_query=True)
    shared_scp.wait_for_peers()  # until then VIEWER is a stranger, and strangers may store
    result = shared_scp.store(make_ct(tmp_path / "x.dcm"), calling="VIEWER")
    assert result.returncode != 0 or "Not Authorised" in result.stdout + result.stderr
    assert Instance.objects.count() == 0


@pytest.mark.archive
def test_reindex_reproduces_the_index(scp, tmp_path):
    from django.core.management import call_command

    make_ct_series(tmp_path / "a", 3, patient_id="P1")
    make_ct_series(tmp_path / "b", 2, patient_id="P2")
    fresh_copy("MR_small_bigendian.dcm", tmp_path / "c" / "mr.dcm")
    assert scp.store(tmp_path / "a", tmp_path / "b").returncode == 0
    assert scp.store(tmp_path / "c", options=["-xb"]).returncode == 0
    scp.stop()

    def snapshot():
        return (
            sorted(Patient.objects.values_list("patient_id", "patient_name", "num_studies")),
            sorted(
                Study.objects.values_list(
                    "study_instance_uid",
                    "patient_id",
                    "study_date",
                    "num_series",
                    "num_instances",
                    "modalities_in_study",
                )
            ),
            sorted(Series.objects.values_list("series_instance_uid", "modality", "series_number", "num_instances")),
            sorted(
                Instance.objects.values_list(
                    "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "file_size", "called_ae", "calling_ae"
                )
            ),
        )

    before = snapshot()
    Instance.objects.all().delete()
    Study.objects.all().delete()
    assert Instance.objects.count() == 0
    call_command("reindex")
    assert snapshot() == before
