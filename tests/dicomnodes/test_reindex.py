"""`manage.py reindex` brings the index in line with the files in place:
rows of studies that still have files keep their primary keys (and their
patient links), and it may run while runscp stores."""

import threading

import pydicom
import pytest
from django.core.management import CommandError, call_command

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance, Patient, Series, Study
from portal.models import StudyToken, hash_token
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct, make_ct_series
from tests.support.processes import stored_files


def uid_of(path):
    return pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID


@pytest.mark.django_db
def test_reindex_keeps_patient_links_and_the_rows_of_studies_with_files(data_dir, tmp_path):
    kept = archive_files(make_ct_series(tmp_path / "kept", 3, patient_id="P1"))
    study = kept[0].series.study
    link = StudyToken.objects.create(token_hash=hash_token("a-link"), study=study)
    gone = archive_files(make_ct_series(tmp_path / "gone", 2, patient_id="P2"))
    for row in gone:
        row.path.unlink()
    instance_path(kept[0].sop_instance_uid).unlink()
    orphan = make_ct(
        tmp_path / "orphan.dcm",
        study_uid=study.study_instance_uid,
        series_uid=kept[0].series.series_instance_uid,
        patient_id="P1",
        instance_number=9,
    )
    archive_files([orphan])
    Instance.objects.filter(sop_instance_uid=uid_of(orphan)).delete()  # a file without a row
    Study.objects.filter(pk=study.pk).update(num_instances=99)  # a counter gone wrong

    call_command("reindex")

    assert StudyToken.objects.filter(pk=link.pk).exists()
    study.refresh_from_db()  # the same row
    assert (study.num_series, study.num_instances) == (1, 3)
    assert set(Instance.objects.values_list("sop_instance_uid", flat=True)) == {
        kept[1].sop_instance_uid,
        kept[2].sop_instance_uid,
        uid_of(orphan),
    }
    assert list(Patient.objects.values_list("patient_id", "num_studies")) == [("P1", 1)]
    assert Instance.objects.get(sop_instance_uid=kept[1].sop_instance_uid).pk == kept[1].pk


@pytest.mark.django_db
def test_reindex_keeps_what_an_administrator_corrected(data_dir, tmp_path):
    rows = archive_files(make_ct_series(tmp_path / "s", 2, patient_name="Doe^Jane"))
    Study.objects.filter(pk=rows[0].series.study_id).update(patient_name="Doe^Janet")

    call_command("reindex")

    assert Study.objects.get().patient_name == "Doe^Janet"


@pytest.mark.django_db
def test_reindex_updates_a_row_from_its_file(data_dir, tmp_path):
    row = archive_files([make_ct(tmp_path / "a.dcm")])[0]
    Instance.objects.filter(pk=row.pk).update(file_size=1, transfer_syntax_uid="1.2.3")

    call_command("reindex")

    row.refresh_from_db()
    assert row.file_size == instance_path(row.sop_instance_uid).stat().st_size
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1"


@pytest.mark.django_db
def test_reindex_refuses_to_empty_the_index_when_the_storage_folder_is_empty(data_dir, tmp_path):
    row = archive_files([make_ct(tmp_path / "a.dcm")])[0]
    instance_path(row.sop_instance_uid).unlink()

    with pytest.raises(CommandError, match="nothing deleted"):
        call_command("reindex")
    assert Instance.objects.count() == 1


def test_reindex_while_runscp_stores_loses_nothing_and_counts_right(scp, tmp_path):
    make_ct_series(tmp_path / "first", 5, patient_id="P1")
    assert scp.store(tmp_path / "first").returncode == 0
    for n in range(4):
        make_ct_series(tmp_path / "more" / str(n), 15, patient_id=f"Q{n}")
    results = []
    senders = [
        threading.Thread(target=lambda n=n: results.append(scp.store(tmp_path / "more" / str(n)))) for n in range(4)
    ]
    for sender in senders:
        sender.start()
    runs = 0
    while any(sender.is_alive() for sender in senders) or runs == 0:
        call_command("reindex")
        runs += 1
    for sender in senders:
        sender.join()
    assert [r.returncode for r in results] == [0] * 4, [r.stdout + r.stderr for r in results]
    call_command("reindex")

    assert Instance.objects.count() == len(stored_files(scp.data_dir)) == 65
    assert sorted(Study.objects.values_list("patient_id", "num_series", "num_instances")) == [
        ("P1", 1, 5),
        ("Q0", 1, 15),
        ("Q1", 1, 15),
        ("Q2", 1, 15),
        ("Q3", 1, 15),
    ]
    assert sorted(Series.objects.values_list("num_instances", flat=True)) == [5, 15, 15, 15, 15]
    assert Patient.objects.count() == 5
