"""What a caller that is not a known peer may change by storing (DCMTK
storescu against runscp).  Anyone may store by default; what anyone stores
is kept, but it renames no patient, replaces no instance and joins no
patient's all-studies link.

Personas: `MODALITY` (a CT scanner in the peer list, on this host),
`STRANGER` (an AE title nobody configured, storing from the same host).
"""

import pydicom
from pydicom.uid import generate_uid

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import DicomServerSettings, DuplicatePolicy, Instance, Patient, Peer, Study
from portal.models import TokenScope
from portal.tokens import create_token
from tests.support.dicomdata import make_ct
from tests.support.processes import MODALITY, STRANGER


def a_known_modality(scp):
    """MODALITY as a peer on this host; it may query too, so that the test
    can wait until runscp has read the peer list (and the settings with it)."""
    Peer.objects.create(name="CT", ae_title=MODALITY, host="127.0.0.1", may_store=True, may_query=True)
    scp.wait_until_allowed(MODALITY, "find")


def test_a_stranger_cannot_rename_a_stored_patient_or_study(shared_scp, tmp_path):
    study_uid = generate_uid()
    real = make_ct(tmp_path / "real.dcm", study_uid=study_uid, patient_id="P1", patient_name="Doe^Jane")
    assert shared_scp.store(real).returncode == 0

    same_study = make_ct(tmp_path / "same.dcm", study_uid=study_uid, patient_id="P1", patient_name="Mallory^Eve")
    new_study = make_ct(tmp_path / "new.dcm", patient_id="P1", patient_name="Mallory^Eve")
    assert shared_scp.store(same_study, new_study, calling=STRANGER).returncode == 0

    assert Instance.objects.count() == 3
    assert Patient.objects.get(patient_id="P1").patient_name == "Doe^Jane"
    assert Study.objects.get(study_instance_uid=study_uid).patient_name == "Doe^Jane"
    # The stranger's own study keeps what it came with, marked as such.
    planted = Study.objects.exclude(study_instance_uid=study_uid).get()
    assert (planted.patient_name, planted.from_known_peer) == ("Mallory^Eve", False)


def test_under_the_overwrite_policy_only_a_known_peer_replaces_an_instance(shared_scp, tmp_path):
    DicomServerSettings.objects.filter(pk=1).update(duplicate_policy=DuplicatePolicy.OVERWRITE)
    a_known_modality(shared_scp)
    uid, study_uid = generate_uid(), generate_uid()
    first = make_ct(tmp_path / "first.dcm", sop_uid=uid, study_uid=study_uid, patient_id="P1", accession="ACC1")
    assert shared_scp.store(first).returncode == 0
    link = create_token(Study.objects.get(), scope=TokenScope.PATIENT).row

    forged = make_ct(tmp_path / "forged.dcm", sop_uid=uid, patient_id="P2", accession="EVIL")
    assert shared_scp.store(forged, calling=STRANGER).returncode == 0, "a duplicate is answered with success"

    assert pydicom.dcmread(instance_path(uid)).AccessionNumber == "ACC1"
    assert Instance.objects.get().series.study.study_instance_uid == study_uid
    assert list(Study.objects.values_list("study_instance_uid", flat=True)) == [study_uid]
    assert not Patient.objects.filter(patient_id="P2").exists()
    link.refresh_from_db()  # the emptied study would have taken its links along

    corrected = make_ct(tmp_path / "corrected.dcm", sop_uid=uid, study_uid=study_uid, patient_id="P1", accession="ACC2")
    assert shared_scp.store(corrected).returncode == 0
    assert pydicom.dcmread(instance_path(uid)).AccessionNumber == "ACC2"


def test_a_strangers_study_does_not_join_a_patients_link(shared_scp, tmp_path):
    a_known_modality(shared_scp)
    assert shared_scp.store(make_ct(tmp_path / "real.dcm", patient_id="P1", accession="ACC1")).returncode == 0
    real = Study.objects.get()
    link = create_token(real, scope=TokenScope.PATIENT).row

    planted = make_ct(tmp_path / "planted.dcm", patient_id="P1", accession="ACC2")
    assert shared_scp.store(planted, calling=STRANGER).returncode == 0

    assert Study.objects.count() == 2
    assert list(link.studies()) == [real]
