"""`manage.py archive delete|verify` (dicomnodes/management/commands/archive.py)."""

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dicomnodes.archive import tombstones
from dicomnodes.archive.storage import instance_path
from dicomnodes.lifecycle import deletion
from dicomnodes.models import Instance, Patient, Study
from pacs_site.models import AuditEvent
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct, make_ct_series


def run(*args):
    out = io.StringIO()
    result = call_command("archive", *args, stdout=out)
    return out.getvalue(), result


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_a_dry_run_lists_exactly_what_the_real_run_deletes(data_dir, tmp_path):
    a = archive_files(make_ct_series(tmp_path / "a", 2, patient_id="P1"))
    b = archive_files(make_ct_series(tmp_path / "b", 1, patient_id="P2"))
    uids = [a[0].series.study.study_instance_uid, b[0].series.study.study_instance_uid]

    dry, said = run("delete", "--study", *uids, "--dry-run")
    assert said == "dry run: would delete 2 patients, 2 studies, 2 series, 3 instances (0.0 MB)"
    assert Instance.objects.count() == 3 and not AuditEvent.objects.exists()

    real, said = run("delete", "--study", *uids, "--reason", "test")

    assert real.splitlines()[:-1] == dry.splitlines()[:-1]  # the last line is the result
    assert all(uid in real for uid in uids)
    assert said == "deleted 2 patients, 2 studies, 2 series, 3 instances (0.0 MB)"
    assert not Study.objects.exists()
    assert not any(instance_path(r.sop_instance_uid).exists() for r in a + b)
    event = AuditEvent.objects.get()
    assert "manage.py archive" in event.actor and event.details["reason"] == "test"


@pytest.mark.django_db(transaction=True)
def test_older_than_spares_recent_and_protected_studies(data_dir, tmp_path):
    old = archive_files(make_ct_series(tmp_path / "old", 1, patient_id="P1"))
    kept = archive_files(make_ct_series(tmp_path / "kept", 1, patient_id="P2"))
    recent = archive_files(make_ct_series(tmp_path / "recent", 1, patient_id="P3"))
    long_ago = timezone.now() - dt.timedelta(days=40)
    Instance.objects.filter(pk__in=[old[0].pk, kept[0].pk]).update(received_at=long_ago)
    Study.objects.filter(pk=kept[0].series.study_id).update(protected=True)

    out, said = run("delete", "--older-than", "30")

    assert old[0].series.study.study_instance_uid in out
    assert said.startswith("deleted 1 patients, 1 studies")
    assert set(Patient.objects.values_list("patient_id", flat=True)) == {"P2", "P3"}
    assert recent[0].path.exists()


@pytest.mark.django_db
def test_delete_names_the_uids_it_does_not_know(data_dir):
    with pytest.raises(CommandError, match="no studies with these UIDs: 1.2.3"):
        run("delete", "--study", "1.2.3")


@pytest.mark.django_db
def test_a_patient_id_of_two_issuers_needs_the_issuer(data_dir, tmp_path):
    archive_files([make_ct(tmp_path / "a.dcm", patient_id="P1")])
    Patient.objects.create(patient_id="P1", issuer_of_patient_id="OTHER")
    with pytest.raises(CommandError, match="give --issuer"):
        run("delete", "--patient", "P1", "--dry-run")
    out, said = run("delete", "--patient", "P1", "--issuer", "", "--dry-run")
    assert said.startswith("dry run: would delete 1 patients, 1 studies")


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_verify_removes_deleted_files_indexes_orphans_and_reports_rows_without_files(data_dir, tmp_path):
    deleted = archive_files([make_ct(tmp_path / "deleted.dcm", patient_id="P1")])[0]
    orphan = archive_files([make_ct(tmp_path / "orphan.dcm", patient_id="P2")])[0]
    missing = archive_files([make_ct(tmp_path / "missing.dcm", patient_id="P3")])[0]
    tombstones.bury([deleted.sop_instance_uid])  # a deletion killed before its unlink
    Instance.objects.filter(pk__in=[deleted.pk, orphan.pk]).delete()
    instance_path(missing.sop_instance_uid).unlink()

    err = io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("archive", "verify", stdout=io.StringIO(), stderr=err)

    assert "1 files of deleted instances removed, 1 without a row (1 indexed now)" in str(failed.value)
    assert "1 rows without their file" in str(failed.value)
    assert f"row without its file: {missing.sop_instance_uid}" in err.getvalue()
    assert not instance_path(deleted.sop_instance_uid).exists()
    assert Instance.objects.filter(sop_instance_uid=orphan.sop_instance_uid).exists()
    assert not Instance.objects.filter(sop_instance_uid=deleted.sop_instance_uid).exists()

    Instance.objects.filter(pk=missing.pk).delete()  # what reindex does
    out, said = run("verify")
    assert said == (
        "1 files: 0 files of deleted instances removed, 0 without a row (0 indexed now), "
        "0 not instances; 0 rows without their file"
    )


@pytest.mark.archive
@pytest.mark.django_db(transaction=True)
def test_many_studies_go_in_transactions_of_a_bounded_number(data_dir, tmp_path, monkeypatch):
    """--older-than names every old study: past CHOSEN_PER_TRANSACTION
    (200; 2 here) they are listed and deleted batch by batch, one
    transaction and one audit event each, and the totals come at the end."""
    monkeypatch.setattr(deletion, "CHOSEN_PER_TRANSACTION", 2)
    rows = [archive_files(make_ct_series(tmp_path / f"s{n}", 1, patient_id=f"P{n}"))[0] for n in range(5)]
    Instance.objects.update(received_at=timezone.now() - dt.timedelta(days=40))

    dry, said = run("delete", "--older-than", "30", "--dry-run")
    assert said == "dry run: would delete 5 patients, 5 studies, 5 series, 5 instances (0.0 MB)"
    real, said = run("delete", "--older-than", "30")

    assert real.splitlines()[:-1] == dry.splitlines()[:-1]
    assert said == "deleted 5 patients, 5 studies, 5 series, 5 instances (0.0 MB)"
    assert not Study.objects.exists() and not any(r.path.exists() for r in rows)
    assert sorted(e.details["studies"] for e in AuditEvent.objects.all()) == [1, 2, 2]

    more = [archive_files(make_ct_series(tmp_path / f"t{n}", 1, patient_id=f"Q{n}"))[0] for n in range(3)]
    done = deletion.delete_studies([r.series.study_id for r in more], actor="admin")
    assert (done.studies, done.instances) == (3, 3) and not Study.objects.exists()
