"""The query-string filters of the API (portal/api/filters.py): values that
cannot be filter values are refused naming the parameter, multi-valued
modalities match one value, empty stored dates stay out of date bounds, and
the schema documents every filter."""

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnodes.models import Study
from tests.support.archive import archive_files
from tests.support.dicomdata import make_ct

pytestmark = pytest.mark.archive

# Every list endpoint and the filters it had before django-filter; none may go.
FILTERS = {
    "/api/studies/": {
        "patient_id",
        "patient_name",
        "date_from",
        "date_to",
        "modality",
        "accession_number",
        "study_instance_uid",
    },
    "/api/series/": {"study", "study_instance_uid", "series_instance_uid", "modality"},
    "/api/instances/": {"series", "series_instance_uid", "sop_instance_uid"},
    "/api/transfers/": {"state", "kind", "peer"},
    "/api/worklist/": {
        "status",
        "patient_id",
        "patient_name",
        "accession_number",
        "modality",
        "station",
        "date_from",
        "date_to",
    },
    "/api/burnjobs/": {"state", "study"},
    "/api/tokens/": {"study", "study_instance_uid"},
    "/api/peers/": set(),
}


def a_study(folder, patient_id, *modalities, study_date="20260101"):
    """A study stored and indexed with one series per modality."""
    study_uid = generate_uid()
    paths = []
    for number, modality in enumerate(modalities, start=1):
        path = make_ct(
            folder / f"{patient_id}-{number}.dcm",
            patient_id=patient_id,
            study_uid=study_uid,
            study_date=study_date,
            size=8,
        )
        ds = pydicom.dcmread(path)
        ds.Modality = modality
        ds.save_as(path)
        paths.append(path)
    return archive_files(paths)[0].series.study


@pytest.fixture
def studies_by_modalities(db, data_dir, tmp_path):
    """P1: CT\\SR, P2: CT\\MR\\SR, P3: MR."""
    made = [
        a_study(tmp_path, "P1", "CT", "SR"),
        a_study(tmp_path, "P2", "CT", "MR", "SR"),
        a_study(tmp_path, "P3", "MR"),
    ]
    assert [s.modalities_in_study for s in Study.objects.order_by("patient_id")] == [
        "CT\\SR",
        "CT\\MR\\SR",
        "MR",
    ]
    return made


def patient_ids(response):
    assert response.status_code == 200, response.content[:300]
    return sorted(row["patient_id"] for row in response.json()["results"])


@pytest.mark.parametrize(
    "modality, expected",
    [
        ("CT", ["P1", "P2"]),  # the first value
        ("SR", ["P1", "P2"]),  # the last value
        ("MR", ["P2", "P3"]),  # a middle value, and the only one
        ("sr", ["P1", "P2"]),  # any case
        ("C", []),  # a part of a value is not a value
    ],
)
def test_a_study_matches_a_modality_that_is_one_of_its_values(an_api_admin, studies_by_modalities, modality, expected):
    assert patient_ids(an_api_admin.get("/api/studies/", {"modality": modality})) == expected


def test_an_empty_filter_value_is_no_filter(an_api_admin, studies_by_modalities):
    assert patient_ids(an_api_admin.get("/api/studies/", {"modality": "  ", "patient_id": ""})) == ["P1", "P2", "P3"]


def test_a_study_without_a_date_is_outside_every_date_bound(an_api_admin, db, data_dir, tmp_path):
    a_study(tmp_path, "DATED", "CT", study_date="20260101")
    a_study(tmp_path, "UNDATED", "CT", study_date="")

    assert patient_ids(an_api_admin.get("/api/studies/?date_to=20991231")) == ["DATED"]
    assert patient_ids(an_api_admin.get("/api/studies/?date_from=19000101")) == ["DATED"]
    assert patient_ids(an_api_admin.get("/api/studies/")) == ["DATED", "UNDATED"]


DATE = "A date: YYYYMMDD or YYYY-MM-DD."
NUMBER = "A whole number."


@pytest.mark.parametrize(
    "url, name, message",
    [
        ("/api/studies/?date_from=yesterday", "date_from", DATE),
        ("/api/studies/?date_to=2026-13-01", "date_to", DATE),
        ("/api/studies/?date_to=2026/01/01", "date_to", DATE),
        ("/api/worklist/?date_from=20260230", "date_from", DATE),
        ("/api/series/?study=abc", "study", NUMBER),
        ("/api/instances/?series=1.0", "series", NUMBER),  # a whole number, not a decimal
        ("/api/transfers/?peer=first", "peer", NUMBER),
        ("/api/burnjobs/?study=1e3", "study", NUMBER),
        ("/api/tokens/?study=%2A", "study", NUMBER),
    ],
)
def test_a_bad_date_or_number_is_answered_with_400_naming_the_parameter(an_api_admin, db, url, name, message):
    response = an_api_admin.get(url)

    assert response.status_code == 400
    assert response.json() == {name: [message]}


def test_a_number_with_spaces_around_it_is_still_a_number(an_api_admin, studies_by_modalities):
    study = studies_by_modalities[2]
    response = an_api_admin.get("/api/series/", {"study": f" {study.pk} "})
    assert response.status_code == 200
    assert [row["modality"] for row in response.json()["results"]] == ["MR"]


def test_the_schema_documents_every_filter_with_a_description(an_api_admin, db):
    schema = an_api_admin.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    for path, names in FILTERS.items():
        parameters = {p["name"]: p for p in schema["paths"][path]["get"]["parameters"]}
        assert set(parameters) - {"page", "page_size"} == names, path
        for name in names:
            assert parameters[name]["in"] == "query"
            assert parameters[name]["description"], (path, name)
        if "study" in names:
            assert parameters["study"]["schema"] == {"type": "integer"}, path
