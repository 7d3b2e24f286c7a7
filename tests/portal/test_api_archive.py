"""The archive over the API: studies, series and instances with their filters,
pagination, and the stored file of an instance."""

import pytest
from pydicom.uid import generate_uid

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance
from tests.support.api import archived
from tests.support.dicomdata import make_ct

pytestmark = pytest.mark.archive


@pytest.fixture
def three_studies(db, data_dir, tmp_path):
    """Jane Doe's CT of 2024-03-01 (two series), John Doe's of 2025-01-15 and
    Richard Roe's of 2026-11-27."""
    jane_uid = generate_uid()
    jane_series = generate_uid()
    jane = [
        archived(
            tmp_path,
            patient_id="P1",
            patient_name="Doe^Jane",
            study_uid=jane_uid,
            study_date="20240301",
            accession="A1",
            series_uid=jane_series,
            instance_number=n,
        )
        for n in (1, 2)
    ]
    jane.append(
        archived(
            tmp_path,
            patient_id="P1",
            patient_name="Doe^Jane",
            study_uid=jane_uid,
            study_date="20240301",
            accession="A1",
            series_number=2,
        )
    )
    john = archived(tmp_path, patient_id="P2", patient_name="Doe^John", study_date="20250115", accession="A2")
    roe = archived(tmp_path, patient_id="P3", patient_name="Roe^Richard", study_date="20261127", accession="A3")
    return {"jane": jane, "john": john, "roe": roe}


def patient_ids(response):
    assert response.status_code == 200, response.content[:300]
    return sorted(row["patient_id"] for row in response.json()["results"])


def test_studies_are_listed_newest_first_with_their_counts(an_api_admin, three_studies):
    body = an_api_admin.get("/api/studies/").json()

    assert body["count"] == 3
    assert [row["study_date"] for row in body["results"]] == ["20261127", "20250115", "20240301"]
    jane = body["results"][2]
    assert (jane["patient_name"], jane["num_series"], jane["num_instances"]) == ("Doe^Jane", 2, 3)
    assert jane["modalities"] == ["CT"]
    assert jane["series"].endswith(f"/api/series/?study={jane['id']}")


@pytest.mark.parametrize(
    "query, expected",
    [
        ("patient_id=P2", ["P2"]),
        ("patient_name=doe*", ["P1", "P2"]),
        ("patient_name=DOE^JOHN", ["P2"]),
        ("patient_name=*^J%3FHN", ["P2"]),  # *^J?HN
        ("date_from=20250101", ["P2", "P3"]),
        ("date_to=2025-01-15", ["P1", "P2"]),
        ("date_from=2024-03-02&date_to=20261126", ["P2"]),
        ("modality=CT", ["P1", "P2", "P3"]),
        ("modality=MR", []),
        ("accession_number=A3", ["P3"]),
    ],
)
def test_studies_can_be_filtered(an_api_admin, three_studies, query, expected):
    assert patient_ids(an_api_admin.get(f"/api/studies/?{query}")) == expected


def test_a_study_is_found_by_its_uid(an_api_admin, three_studies):
    uid = three_studies["roe"].series.study.study_instance_uid
    assert patient_ids(an_api_admin.get(f"/api/studies/?study_instance_uid={uid}")) == ["P3"]


def test_a_bad_date_is_answered_with_400_not_ignored(an_api_admin, three_studies):
    response = an_api_admin.get("/api/studies/?date_from=yesterday")
    assert response.status_code == 400
    assert "date_from" in response.json()


def test_the_list_is_paginated(an_api_admin, three_studies):
    first = an_api_admin.get("/api/studies/?page_size=2").json()
    second = an_api_admin.get(first["next"]).json()

    assert (first["count"], len(first["results"]), len(second["results"])) == (3, 2, 1)
    assert second["next"] is None


def test_series_are_listed_by_study(an_api_admin, three_studies):
    study_id = three_studies["jane"][0].series.study_id
    body = an_api_admin.get(f"/api/series/?study={study_id}").json()

    assert [(row["series_number"], row["num_instances"]) for row in body["results"]] == [(1, 2), (2, 1)]
    uid = three_studies["jane"][0].series.study.study_instance_uid
    assert {row["study_instance_uid"] for row in body["results"]} == {uid}
    assert an_api_admin.get(f"/api/series/?study_instance_uid={uid}").json()["count"] == 2


def test_instances_are_listed_by_series(an_api_admin, three_studies):
    series = three_studies["jane"][0].series
    body = an_api_admin.get(f"/api/instances/?series={series.pk}").json()

    assert [row["instance_number"] for row in body["results"]] == [1, 2]
    assert body["results"][0]["file"].endswith(f"/api/instances/{body['results'][0]['id']}/file")
    by_uid = an_api_admin.get(f"/api/instances/?series_instance_uid={series.series_instance_uid}").json()
    assert by_uid["count"] == 2


def test_a_filter_that_is_not_a_number_is_refused(an_api_admin, three_studies):
    assert an_api_admin.get("/api/instances/?series=abc").status_code == 400


def test_the_file_of_an_instance_is_streamed_as_stored(a_reader, three_studies):
    instance = three_studies["john"]

    response = a_reader.get(f"/api/instances/{instance.pk}/file")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/dicom"
    assert f'filename="{instance.sop_instance_uid}.dcm"' in response.headers["Content-Disposition"]
    assert b"".join(response.streaming_content) == instance_path(instance.sop_instance_uid).read_bytes()


def test_a_client_may_ask_for_application_dicom(a_reader, three_studies):
    response = a_reader.get(f"/api/instances/{three_studies['roe'].pk}/file", HTTP_ACCEPT="application/dicom")
    assert response.status_code == 200
    assert b"".join(response.streaming_content)[128:132] == b"DICM"


def test_a_file_missing_from_the_storage_is_a_404_that_says_so(a_reader, three_studies):
    instance = three_studies["roe"]
    instance_path(instance.sop_instance_uid).unlink()

    response = a_reader.get(f"/api/instances/{instance.pk}/file")

    assert response.status_code == 404
    assert "missing" in response.json()["detail"]


def test_an_instance_stored_by_storescu_downloads_byte_identical(an_api_admin, shared_scp, tmp_path):
    sent = make_ct(tmp_path / "sent.dcm", patient_id="P9")
    shared_scp.store(sent)
    instance = Instance.objects.get()

    response = an_api_admin.get(f"/api/instances/{instance.pk}/file")

    downloaded = b"".join(response.streaming_content)
    assert downloaded == instance_path(instance.sop_instance_uid).read_bytes()
    # The dataset after the file meta group is what storescu sent, byte for byte.
    assert dataset_bytes(downloaded) == dataset_bytes(sent.read_bytes())


def dataset_bytes(part10):
    """What follows the file meta group: preamble (128) + "DICM" (4) + the
    (0002,0000) element (12 bytes, explicit VR UL) + the group length it holds."""
    assert part10[128:136] == b"DICM\x02\x00\x00\x00"
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length :]
