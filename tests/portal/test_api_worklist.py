"""Worklist items over the API: staff list and filter them; creating,
changing and deleting need the worklist item permissions."""

import pytest

from worklist.models import ItemStatus, WorklistItem

ORDER = {
    "patient_id": "P1",
    "patient_name": "Doe^Jane",
    "accession_number": "ACC9",
    "modality": "CT",
    "scheduled_station_ae_title": "CT1",
    "scheduled_start_date": "20261127",
    "scheduled_start_time": "093000",
    "requested_procedure_description": "CT CHEST",
}


@pytest.fixture
def two_items(db):
    return [
        WorklistItem.objects.create(**ORDER),
        WorklistItem.objects.create(
            patient_id="P2", patient_name="Roe^Richard", modality="MR", scheduled_start_date="20261128"
        ),
    ]


def test_an_admin_schedules_a_procedure_step(an_api_admin, db):
    response = an_api_admin.post("/api/worklist/", ORDER, format="json")

    assert response.status_code == 201, response.json()
    item = WorklistItem.objects.get()
    assert (item.patient_name_upper, item.status, item.modality) == ("DOE^JANE", ItemStatus.SCHEDULED, "CT")
    assert "patient_name_upper" not in response.json()


def test_a_bad_station_ae_title_is_refused(an_api_admin, db):
    response = an_api_admin.post("/api/worklist/", {**ORDER, "scheduled_station_ae_title": "A" * 17}, format="json")
    assert response.status_code == 400
    assert "scheduled_station_ae_title" in response.json()


def test_an_admin_changes_and_deletes_an_item(an_api_admin, two_items):
    item = two_items[0]
    response = an_api_admin.patch(f"/api/worklist/{item.pk}/", {"status": "CANCELLED"}, format="json")
    assert response.status_code == 200
    item.refresh_from_db()
    assert item.status == ItemStatus.CANCELLED

    assert an_api_admin.delete(f"/api/worklist/{item.pk}/").status_code == 204
    assert WorklistItem.objects.count() == 1


@pytest.mark.parametrize(
    "query, expected",
    [
        ("patient_name=ROE*", ["P2"]),
        ("modality=CT", ["P1"]),
        ("accession_number=ACC9", ["P1"]),
        ("station=CT1", ["P1"]),
        ("date_from=2026-11-28", ["P2"]),
        ("date_to=20261127", ["P1"]),
        ("status=SCHEDULED", ["P1", "P2"]),
    ],
)
def test_items_can_be_filtered(an_api_admin, two_items, query, expected):
    body = an_api_admin.get(f"/api/worklist/?{query}").json()
    assert sorted(row["patient_id"] for row in body["results"]) == expected


def test_a_reader_only_reads_the_worklist(a_reader, two_items):
    item = two_items[0]
    assert a_reader.get("/api/worklist/").json()["count"] == 2
    assert a_reader.post("/api/worklist/", ORDER, format="json").status_code == 403
    assert a_reader.patch(f"/api/worklist/{item.pk}/", {"status": "CANCELLED"}, format="json").status_code == 403
    assert a_reader.delete(f"/api/worklist/{item.pk}/").status_code == 403


def test_anonymous_and_non_staff_clients_cannot_write(anonymous, a_clerk, two_items):
    assert anonymous.post("/api/worklist/", ORDER, format="json").status_code == 401
    assert a_clerk.post("/api/worklist/", ORDER, format="json").status_code == 403
    assert a_clerk.delete(f"/api/worklist/{two_items[0].pk}/").status_code == 403
    assert WorklistItem.objects.count() == 2
