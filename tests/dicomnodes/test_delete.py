"""Deleting from the archive (dicomnodes/lifecycle/deletion.py): rows in one
transaction, files after the commit, counters right, tombstones that keep
the start-up reconciliation from bringing a deleted instance back."""

import datetime as dt

import pydicom
import pytest
from django.core.management import call_command
from django.utils import timezone
from pydicom.uid import generate_uid

from dicomnodes.archive import tombstones
from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.index import IndexItem, apply_batch
from dicomnodes.archive.reconcile import index_orphans
from dicomnodes.archive.storage import instance_path
from dicomnodes.lifecycle import deletion
from dicomnodes.models import (
    AssociationLog,
    AssociationResult,
    Instance,
    Patient,
    Peer,
    Series,
    Study,
    Tombstone,
    TransferJob,
    TransferLevel,
)
from pacs_site.models import AuditEvent
from portal.models import StudyToken, hash_token
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct, make_ct_series


def two_modality_study(tmp_path, patient_id="P1"):
    """A study of a CT series (2 images) and an MR series (1 image); its rows."""
    study_uid = generate_uid()
    ct = archive_files(make_ct_series(tmp_path / "ct", 2, study_uid=study_uid, patient_id=patient_id))
    mr_path = make_ct(tmp_path / "mr.dcm", study_uid=study_uid, patient_id=patient_id, series_number=2)
    ds = pydicom.dcmread(mr_path)
    ds.Modality = "MR"
    ds.save_as(mr_path)
    mr = archive_files([mr_path])
    return ct, mr


def paths_of(rows):
    return [instance_path(r.sop_instance_uid) for r in rows]


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_deleting_one_series_keeps_the_counters_and_modalities_right(data_dir, tmp_path):
    ct, mr = two_modality_study(tmp_path)
    study = Study.objects.get()
    assert study.modalities_in_study == "CT\\MR"

    done = deletion.delete_series([mr[0].series_id], actor="admin")

    assert (done.series, done.instances, done.studies, done.patients) == (1, 1, 0, 0)
    study.refresh_from_db()
    assert (study.num_series, study.num_instances, study.modalities_in_study) == (1, 2, "CT")
    assert Patient.objects.get().num_studies == 1
    assert not any(p.exists() for p in paths_of(mr))
    assert all(p.exists() for p in paths_of(ct))
    assert not Tombstone.objects.filter(unlinked_at=None).exists()


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_deleting_the_last_study_of_a_patient_deletes_the_patient(data_dir, tmp_path):
    ct, mr = two_modality_study(tmp_path, patient_id="P1")
    other = archive_files(make_ct_series(tmp_path / "other", 1, patient_id="P2"))

    done = deletion.delete_studies([ct[0].series.study_id], actor="admin")

    assert (done.patients, done.studies, done.series, done.instances) == (1, 1, 2, 3)
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["P2"]
    assert Series.objects.count() == 1 and Instance.objects.count() == 1
    assert not any(p.exists() for p in paths_of(ct + mr))
    assert paths_of(other)[0].exists()


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_deleting_instances_one_by_one_empties_the_series_then_the_study(data_dir, tmp_path):
    rows = archive_files(make_ct_series(tmp_path / "s", 2))
    deletion.delete_instances([rows[0].pk], actor="admin")
    assert Study.objects.get().num_instances == 1
    assert Series.objects.get().num_instances == 1

    deletion.delete_instances([rows[1].pk], actor="admin")

    assert not Study.objects.exists() and not Patient.objects.exists()


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_deleting_a_patient_deletes_all_its_studies_and_writes_one_audit_event(data_dir, tmp_path):
    archive_files(make_ct_series(tmp_path / "a", 2, patient_id="P1"))
    archive_files(make_ct_series(tmp_path / "b", 1, patient_id="P1"))

    done = deletion.delete_patients([Patient.objects.get().pk], actor="admin", reason="test")

    assert (done.patients, done.studies, done.instances) == (1, 2, 3)
    assert not Study.objects.exists()
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.actor_kind, event.patient_id) == ("delete", "admin", "user", "P1")
    assert event.details["instances"] == 3 and event.details["reason"] == "test"


@pytest.mark.django_db
def test_the_summary_counts_links_transfers_and_partial_studies(data_dir, tmp_path):
    ct, mr = two_modality_study(tmp_path)
    study = Study.objects.get()
    StudyToken.objects.create(token_hash=hash_token("open"), study=study)
    StudyToken.objects.create(token_hash=hash_token("revoked"), study=study, revoked_at=timezone.now())
    peer = Peer.objects.create(name="p", ae_title="P", host="127.0.0.1", port=104)
    TransferJob.objects.create(kind="send", peer=peer, level=TransferLevel.STUDY, uids=[study.study_instance_uid])
    TransferJob.objects.create(kind="send", peer=peer, level=TransferLevel.STUDY, uids=["1.2.3"])

    whole = deletion.summary(studies=[study.pk])
    part = deletion.summary(series=[mr[0].series_id])

    assert (whole.patients, whole.studies, whole.series, whole.instances) == (1, 1, 2, 3)
    assert whole.bytes == sum(p.stat().st_size for p in paths_of(ct + mr))
    assert (whole.open_links, whole.active_transfers, whole.partial_studies) == (1, 1, 0)
    assert (part.patients, part.studies, part.series, part.instances) == (0, 0, 1, 1)
    assert (part.open_links, part.active_transfers, part.partial_studies) == (0, 1, 1)


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_a_patient_link_to_a_deleted_study_goes_with_it(data_dir, tmp_path):
    rows = archive_files(make_ct_series(tmp_path / "s", 1))
    StudyToken.objects.create(token_hash=hash_token("link"), study=rows[0].series.study)

    deletion.delete_studies([rows[0].series.study_id], actor="admin")

    assert not StudyToken.objects.exists()


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_files_left_by_an_interrupted_deletion_are_unlinked_not_indexed_at_start(data_dir, tmp_path):
    rows = archive_files(make_ct_series(tmp_path / "s", 2))
    # What a kill between the commit and the unlink leaves: rows gone,
    # tombstones pending, files on disk.
    tombstones.bury([r.sop_instance_uid for r in rows])
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()

    scan = index_orphans()

    assert (scan.unlinked, scan.indexed) == (2, 0)
    assert not Instance.objects.exists()
    assert not any(p.exists() for p in paths_of(rows))


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_an_instance_stored_again_after_its_deletion_creates_its_study_afresh(data_dir, tmp_path):
    source = make_ct(tmp_path / "a.dcm")
    rows = archive_files([source])
    deletion.delete_studies([rows[0].series.study_id], actor="admin")
    assert Tombstone.objects.filter(unlinked_at__isnull=False).count() == 1

    again = archive_files([source])

    assert again[0].series.study.num_instances == 1
    assert paths_of(again)[0].exists()
    assert not Tombstone.objects.exists()
    assert index_orphans().unlinked == 0


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_an_instance_whose_deleted_copy_is_still_on_disk_is_refused_until_it_is_gone(data_dir, tmp_path):
    source = make_ct(tmp_path / "a.dcm")
    rows = archive_files([source])
    tombstones.bury([rows[0].sop_instance_uid])  # deleted, not yet unlinked
    Instance.objects.all().delete()
    item = IndexItem(read_header_file(source), file_size=1, file_is_new=False, overwrite=False)

    with pytest.raises(tombstones.BeingDeleted):
        apply_batch([item])

    assert Tombstone.objects.get().unlinked_at is None  # rolled back: still to be unlinked


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_reindex_unlinks_the_files_of_deleted_instances_instead_of_indexing_them(data_dir, tmp_path):
    kept = archive_files([make_ct(tmp_path / "kept.dcm", patient_id="P1")])
    gone = archive_files([make_ct(tmp_path / "gone.dcm", patient_id="P2")])
    tombstones.bury([gone[0].sop_instance_uid])  # deleted, killed before the unlink
    Instance.objects.filter(pk=gone[0].pk).delete()

    call_command("reindex")

    assert list(Instance.objects.values_list("sop_instance_uid", flat=True)) == [kept[0].sop_instance_uid]
    assert not paths_of(gone)[0].exists() and paths_of(kept)[0].exists()
    assert list(Patient.objects.values_list("patient_id", flat=True)) == ["P1"]


@pytest.mark.django_db
def test_a_study_is_being_received_while_instances_arrive_or_its_association_is_open(data_dir, tmp_path):
    rows = archive_files([make_ct(tmp_path / "a.dcm")])
    study = rows[0].series.study
    assert deletion.is_receiving(study)  # just received

    later = timezone.now() + dt.timedelta(minutes=3)
    assert not deletion.is_receiving(study, now=later)

    open_association = AssociationLog.objects.create(started_at=timezone.now(), result=AssociationResult.OPEN)
    Instance.objects.filter(pk=rows[0].pk).update(association=open_association)
    assert deletion.is_receiving(study, now=later)
    assert not deletion.is_receiving(study, now=later + dt.timedelta(hours=1))  # a crash left it open
    AssociationLog.objects.filter(pk=open_association.pk).update(result=AssociationResult.RELEASED)
    assert not deletion.is_receiving(study, now=later)
