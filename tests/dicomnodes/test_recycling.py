"""Recycling and retention rules (dicomnodes/lifecycle/recycling.py, rules.py):
what they pick, what they leave (protected, held), that a dry run lists
exactly what the real run deletes, and recycling in runscp after storescu."""

import datetime
import uuid

import pydicom
import pytest
from django.utils import timezone
from pydicom.uid import generate_uid

from dicomnodes.archive.storage import instance_path
from dicomnodes.lifecycle import recycling, rules
from dicomnodes.models import (
    ArchiveSettings,
    Instance,
    Patient,
    Peer,
    RetentionRule,
    Study,
    TransferJob,
    TransferKind,
    TransferLevel,
)
from pacs_site.models import AuditEvent
from pacs_site.retention import pruners
from publishing.models import BurnJob, JobState, PublisherKind, Trigger
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct
from tests.support.processes import stored_files, wait_until

NOW = timezone.now()


def study(tmp_path, *, days_old, patient_id=None, modality="CT", calling_ae="MODALITY1", size=64, images=1):
    """A study of `images` images received `days_old` days ago; its Study row."""
    study_uid = generate_uid()
    paths = []
    for n in range(images):
        path = make_ct(
            tmp_path / f"{uuid.uuid4().hex}.dcm",
            study_uid=study_uid,
            patient_id=patient_id or f"P{uuid.uuid4().hex[:8]}",
            instance_number=n + 1,
            size=size,
        )
        if modality != "CT":
            ds = pydicom.dcmread(path)
            ds.Modality = modality
            ds.save_as(path)
        paths.append(path)
    archive_files(paths, calling_ae=calling_ae)
    received = NOW - datetime.timedelta(days=days_old)
    Instance.objects.filter(series__study__study_instance_uid=study_uid).update(received_at=received)
    return Study.objects.get(study_instance_uid=study_uid)


def uids(studies):
    return sorted(s.study_instance_uid for s in studies)


def remaining():
    return sorted(Study.objects.values_list("study_instance_uid", flat=True))


def audit_actors():
    return sorted(AuditEvent.objects.filter(action="delete").values_list("actor", "study_instance_uid"))


def rule(**fields):
    return RetentionRule.objects.create(**{"name": "old", "older_than_days": 30, **fields})


# --- retention rules -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_rule_deletes_exactly_what_its_dry_run_listed_and_logs_itself(data_dir, tmp_path):
    old1, old2 = study(tmp_path, days_old=40), study(tmp_path, days_old=31)
    recent = study(tmp_path, days_old=29)
    protected = study(tmp_path, days_old=50)
    Study.objects.filter(pk=protected.pk).update(protected=True)
    patient_protected = study(tmp_path, days_old=60)
    Patient.objects.filter(pk=patient_protected.patient_record_id).update(protected=True)
    old_rule = rule()

    dry_run = rules.preview(old_rule)

    assert uids(dry_run.studies) == uids([old1, old2])
    assert [s.study_instance_uid for s in dry_run.studies] == [old1.study_instance_uid, old2.study_instance_uid]
    files = [
        instance_path(uid)
        for uid in Instance.objects.filter(series__study__in=[old1, old2]).values_list("sop_instance_uid", flat=True)
    ]
    assert len(files) == 2 and all(p.exists() for p in files)

    done = rules.apply(old_rule)

    assert sorted(uid for d in done for uid in d.study_uids) == uids(dry_run.studies)
    assert remaining() == uids([recent, protected, patient_protected])
    assert not any(p.exists() for p in files)
    assert audit_actors() == sorted(("rule: old", s.study_instance_uid) for s in (old1, old2))
    old_rule.refresh_from_db()
    assert old_rule.last_deleted == 2 and old_rule.last_run_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_rule_for_one_modality_picks_only_studies_with_it(data_dir, tmp_path):
    ct = study(tmp_path, days_old=40, modality="CT")
    mr = study(tmp_path, days_old=40, modality="MR")
    cr = study(tmp_path, days_old=40, modality="CR")

    assert uids(rules.preview(rule(modality="MR")).studies) == uids([mr])
    rules.apply(RetentionRule.objects.get())
    assert remaining() == uids([ct, cr])


@pytest.mark.django_db(transaction=True)
def test_a_rule_for_one_calling_ae_picks_only_studies_it_sent(data_dir, tmp_path):
    from_us = study(tmp_path, days_old=40, calling_ae="US_ROOM1")
    from_ct = study(tmp_path, days_old=40, calling_ae="CT_ROOM1")

    assert uids(rules.preview(rule(calling_ae="US_ROOM1")).studies) == uids([from_us])
    rules.apply(RetentionRule.objects.get())
    assert remaining() == uids([from_ct])


@pytest.mark.django_db(transaction=True)
def test_a_study_in_a_queued_send_is_held_and_listed_as_such(data_dir, tmp_path):
    sent = study(tmp_path, days_old=40)
    free = study(tmp_path, days_old=40)
    peer = Peer.objects.create(name="dest", ae_title="DEST", host="127.0.0.1", port=104)
    TransferJob.objects.create(
        kind=TransferKind.SEND, peer=peer, level=TransferLevel.STUDY, uids=[sent.study_instance_uid]
    )

    dry_run = rules.preview(rule())

    assert uids(dry_run.studies) == uids([free])
    assert [(s.study_instance_uid, why) for s, why in dry_run.held] == [
        (sent.study_instance_uid, "in a queued or running send")
    ]


@pytest.mark.django_db(transaction=True)
def test_a_study_on_a_pending_burn_job_is_held_until_the_job_is_done(data_dir, tmp_path):
    burning = study(tmp_path, days_old=40)
    job = BurnJob.objects.create(kind=PublisherKind.EPSON, trigger=Trigger.IMMEDIATE, state=JobState.DUE)
    job.studies.add(burning)

    dry_run = rules.preview(rule())
    assert dry_run.studies == [] and [why for _, why in dry_run.held] == ["on a pending burn job"]

    BurnJob.objects.filter(pk=job.pk).update(state=JobState.DONE)
    assert uids(rules.preview(RetentionRule.objects.get()).studies) == uids([burning])


@pytest.mark.django_db(transaction=True)
def test_the_daily_task_applies_enabled_rules_then_recycling(data_dir, tmp_path):
    old = study(tmp_path, days_old=40)
    kept = study(tmp_path, days_old=40)
    rule(name="enabled")
    rule(name="disabled", enabled=False, older_than_days=1)
    Study.objects.filter(pk=kept.pk).update(protected=True)

    text = pruners()["retention rules and recycling"](None)

    assert text == "enabled: 1 studies deleted; recycling: 0 studies deleted"
    assert remaining() == uids([kept])
    assert audit_actors() == [("rule: enabled", old.study_instance_uid)]


# --- recycling -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_over_the_patient_limit_the_oldest_unprotected_patients_studies_go(data_dir, tmp_path):
    oldest = study(tmp_path, days_old=9, patient_id="A")
    protected = study(tmp_path, days_old=8, patient_id="B")
    Patient.objects.filter(patient_id="B").update(protected=True)
    c_older = study(tmp_path, days_old=7, patient_id="C")
    c_newer = study(tmp_path, days_old=1, patient_id="C")
    d = study(tmp_path, days_old=2, patient_id="D")
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"max_patients": 2})

    todo = recycling.plan()

    # Oldest first: A's study (A gone), C's older one (C stays: it has
    # another), D's (D gone): B and C are left.
    assert [s.study_instance_uid for s in todo.studies] == [
        oldest.study_instance_uid,
        c_older.study_instance_uid,
        d.study_instance_uid,
    ]
    recycling.recycle()
    assert remaining() == uids([protected, c_newer])
    assert {actor for actor, _ in audit_actors()} == {"recycling"}
    assert Patient.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_under_the_limits_recycling_deletes_nothing(data_dir, tmp_path):
    study(tmp_path, days_old=9)
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"max_storage_mb": 1, "max_patients": 1})
    assert recycling.plan().studies == []
    assert recycling.recycle() == []
    assert Study.objects.count() == 1


def test_storescu_over_the_maximum_size_recycles_the_oldest_unprotected_studies(scp, tmp_path):
    """Three studies of ≈1.1 MB received days ago (the oldest protected), a
    maximum of 3 MB, then a fourth study from storescu: runscp deletes the
    two oldest unprotected ones, never the protected one nor the new one."""
    sent = []
    for days_old in (3, 2, 1):
        folder = tmp_path / f"study{days_old}"
        folder.mkdir()
        make_ct(folder / "ct.dcm", patient_id=f"P{days_old}", size=750)
        assert scp.store(folder).returncode == 0
        uid = pydicom.dcmread(folder / "ct.dcm").StudyInstanceUID
        Instance.objects.filter(series__study__study_instance_uid=uid).update(
            received_at=NOW - datetime.timedelta(days=days_old)
        )
        sent.append(uid)
    protected, second, third = sent
    Study.objects.filter(study_instance_uid=protected).update(protected=True)
    ArchiveSettings.objects.update_or_create(pk=1, defaults={"max_storage_mb": 3})

    newest = make_ct(tmp_path / "new.dcm", patient_id="P0", size=750)
    assert scp.store(newest).returncode == 0

    new_uid = pydicom.dcmread(newest).StudyInstanceUID
    wait_until(lambda: Study.objects.count() == 2, 30, message="recycling in runscp")
    assert remaining() == sorted([protected, new_uid])
    assert audit_actors() == sorted([("recycling", second), ("recycling", third)])
    wait_until(lambda: len(stored_files(scp.data_dir)) == 2, 10, message="the files of the deleted studies unlinked")
    assert "recycling: 2 studies deleted" in scp.log()
