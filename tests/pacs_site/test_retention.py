"""Retention: one daily django-q2 task runs every app's pruner with the
retention settings (pacs_site/retention.py)."""

import datetime
import os
import time
import uuid

import pytest
from django.utils import timezone
from django_q.models import Schedule

from dicomnodes.models import AssociationLog, Instance
from pacs_site import retention
from pacs_site.models import Event, EventKind, RetentionSettings
from portal.previews import cache_path
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct
from worklist.models import (
    DeliveryState,
    HL7Destination,
    HL7Message,
    MessageOutcome,
    OutgoingHL7Message,
    WorklistItem,
)

pytestmark = pytest.mark.django_db
DAY = 86400


def a_file(path, *, size=1000, days_old=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    then = time.time() - days_old * DAY
    os.utime(path, (then, then))
    return path


def quarantined(data_dir, **kwargs):
    return a_file(data_dir / "quarantine" / f"{uuid.uuid4().hex}.dcm", **kwargs)


def settings_row(**values):
    row = RetentionSettings.load()
    for name, value in values.items():
        setattr(row, name, value)
    row.save()
    return row


def test_one_daily_schedule_runs_every_apps_pruner():
    (schedule,) = Schedule.objects.filter(func="pacs_site.retention.prune_all")
    assert (schedule.schedule_type, schedule.repeats) == (Schedule.DAILY, -1)
    assert not Schedule.objects.filter(func="pacs_site.events.prune").exists()  # folded in
    assert set(retention.pruners()) == {
        "quarantine",
        "association log",
        "preview cache",
        "DICOMweb metadata cache",
        "HL7 message text",
        "dashboard events",
        "audit events",
        "retention rules and recycling",
    }


def test_quarantined_files_older_than_the_days_are_deleted(data_dir):
    settings_row(quarantine_days=30, quarantine_max_mb=0)
    old = quarantined(data_dir, days_old=31)
    recent = quarantined(data_dir, days_old=29)
    retention.prune_all()
    assert (old.exists(), recent.exists()) == (False, True)


def test_the_quarantine_is_kept_under_its_size_the_oldest_going_first(data_dir):
    settings_row(quarantine_days=0, quarantine_max_mb=1)
    files = [quarantined(data_dir, size=400_000, days_old=age) for age in (3, 2, 1)]
    done = retention.prune_all()
    assert [f.exists() for f in files] == [False, True, True]
    assert done["quarantine"] == "1 files (0.4 MB) deleted"


def test_previews_older_than_the_days_or_over_the_size_are_deleted(data_dir):
    settings_row(preview_days=10, preview_max_mb=1)
    old = a_file(cache_path("1.2.3"), days_old=11)
    big = [a_file(cache_path(f"1.2.{n}"), size=600_000, days_old=5 - n) for n in (4, 5)]
    retention.prune_all()
    assert (old.exists(), big[0].exists(), big[1].exists()) == (False, False, True)


def test_the_text_of_old_hl7_messages_is_blanked_and_the_rows_and_items_stay():
    settings_row(hl7_message_days=90)
    item = WorklistItem.objects.create(patient_id="P1", patient_name="Doe^Jane")
    old = HL7Message.objects.create(
        raw="MSH|...|PID|||P1||Doe^Jane", ack="MSA|AA|1", control_id="1", outcome=MessageOutcome.APPLIED, item=item
    )
    HL7Message.objects.filter(pk=old.pk).update(received_at=timezone.now() - datetime.timedelta(days=91))
    recent = HL7Message.objects.create(raw="MSH|...", control_id="2", outcome=MessageOutcome.APPLIED)
    ris = HL7Destination.objects.create(name="RIS", host="127.0.0.1", port=2575)
    sent = OutgoingHL7Message.objects.create(
        item=item, destination=ris, message="ORM|Doe^Jane", state=DeliveryState.SENT
    )
    waiting = OutgoingHL7Message.objects.create(item=item, destination=ris, message="ORM|Doe^Jane")
    OutgoingHL7Message.objects.filter(pk__in=[sent.pk, waiting.pk]).update(
        created_at=timezone.now() - datetime.timedelta(days=91)
    )

    retention.prune_all()

    old.refresh_from_db()
    assert (old.raw, old.ack, old.control_id, old.item_id) == ("", "", "1", item.pk)
    assert HL7Message.objects.get(pk=recent.pk).raw == "MSH|..."
    assert OutgoingHL7Message.objects.get(pk=sent.pk).message == ""
    assert OutgoingHL7Message.objects.get(pk=waiting.pk).message == "ORM|Doe^Jane"  # still to be sent
    assert WorklistItem.objects.filter(pk=item.pk).exists()


def test_association_log_rows_are_bounded_by_age_and_count_and_instances_stay(data_dir, tmp_path):
    settings_row(association_log_days=180, association_log_max_rows=3)
    now = timezone.now()
    rows = [
        AssociationLog.objects.create(started_at=now - datetime.timedelta(days=days), calling_ae=f"AE{days}")
        for days in (200, 10, 5, 3, 1)
    ]
    (instance,) = archive_files([make_ct(tmp_path / "ct.dcm")], association=rows[0])

    done = retention.prune_all()

    assert sorted(AssociationLog.objects.values_list("calling_ae", flat=True)) == ["AE1", "AE3", "AE5"]
    assert done["association log"] == "2 association log rows deleted"
    instance = Instance.objects.get(pk=instance.pk)
    assert instance.association_id is None


def test_dashboard_events_follow_their_days():
    settings_row(event_days=7)
    old = Event.objects.create(kind=EventKind.STUDY_RECEIVED, message="old")
    Event.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(days=8))
    Event.objects.create(kind=EventKind.STUDY_RECEIVED, message="new")
    retention.prune_all()
    assert list(Event.objects.values_list("message", flat=True)) == ["new"]


def test_zero_keeps_everything(data_dir):
    settings_row(quarantine_days=0, quarantine_max_mb=0, association_log_days=0, association_log_max_rows=0)
    old = quarantined(data_dir, days_old=10_000)
    AssociationLog.objects.create(started_at=timezone.now() - datetime.timedelta(days=10_000))
    retention.prune_all()
    assert old.exists() and AssociationLog.objects.count() == 1


def test_a_failing_pruner_does_not_stop_the_others(data_dir):
    settings_row(quarantine_days=1)
    old = quarantined(data_dir, days_old=2)

    def broken(row):
        raise RuntimeError("boom")

    retention.register_pruner("broken", broken)
    try:
        done = retention.prune_all()
    finally:
        retention._PRUNERS.pop("broken")
    assert done["broken"] == "failed"
    assert not old.exists()
