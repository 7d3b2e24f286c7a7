"""Events for the web UI when an incoming association brings a study."""

import pytest
from pydicom import dcmread

from dicomnodes.models import DicomServerSettings
from pacs_site.models import Event, EventKind
from tests.support.dicomdata import make_ct_series
from tests.support.processes import wait_until

pytestmark = pytest.mark.archive


@pytest.mark.parametrize("open_study", [True, False])
def test_a_study_stored_by_a_modality_is_announced_once_per_association(start_scp, tmp_path, open_study):
    row = DicomServerSettings.load()
    row.open_transferred_studies = open_study
    row.save()
    scp = start_scp()
    first = make_ct_series(tmp_path / "a", 3)
    make_ct_series(tmp_path / "b", 2)
    assert scp.store(tmp_path / "a", tmp_path / "b").returncode == 0
    wait_until(lambda: Event.objects.count() >= 2, 10, message="two events")
    events = list(Event.objects.order_by("id"))
    assert len(events) == 2
    assert {e.kind for e in events} == {EventKind.STUDY_RECEIVED}
    assert {e.open_study for e in events} == {open_study}
    assert str(dcmread(first[0]).StudyInstanceUID) in {e.study_instance_uid for e in events}
    assert all("received from MODALITY1" in e.message for e in events)
    assert "Doe" not in events[0].message  # no patient names in the message


def test_an_echo_announces_nothing(shared_scp):
    assert shared_scp.echo().returncode == 0
    shared_scp.wait_for_log("released")
    assert not Event.objects.exists()


def test_events_older_than_thirty_days_are_pruned(db):
    import datetime

    from django.utils import timezone

    from pacs_site.events import prune, record

    old = record(EventKind.STUDY_RECEIVED, "old")
    record(EventKind.STUDY_RECEIVED, "new")
    Event.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(days=31))
    assert prune() == 1
    assert list(Event.objects.values_list("message", flat=True)) == ["new"]
