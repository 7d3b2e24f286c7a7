"""Who may read the API: every endpoint answers an anonymous client 401, a
logged-in user who is not staff 403, staff without the model's view
permission 403 (the API root and schema pages excepted), and staff with it
200; a DRF token works as well as a session."""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from dicomnodes.models import Peer, TransferJob
from portal.tokens import create_token
from publishing.models import BurnJob
from tests.support.api import archived
from worklist.models import WorklistItem

ENDPOINTS = [
    "/api/",
    "/api/studies/",
    "/api/studies/{study}/",
    "/api/series/",
    "/api/series/{series}/",
    "/api/instances/",
    "/api/instances/{instance}/",
    "/api/instances/{instance}/file",
    "/api/peers/",
    "/api/peers/{peer}/",
    "/api/transfers/",
    "/api/transfers/{job}/",
    "/api/worklist/",
    "/api/worklist/{item}/",
    "/api/burnjobs/",
    "/api/burnjobs/{burn}/",
    "/api/tokens/",
    "/api/tokens/{token}/",
    "/api/schema/",
    "/api/docs/",
    "/api/redoc/",
]


@pytest.fixture
def one_of_each(db, data_dir, tmp_path):
    instance = archived(tmp_path)
    peer = Peer.objects.create(name="Orthanc", ae_title="ORTHANC", host="127.0.0.1", port=4242)
    return {
        "instance": instance.pk,
        "series": instance.series_id,
        "study": instance.series.study_id,
        "peer": peer.pk,
        "job": TransferJob.objects.create(kind="send", peer=peer, uids=["1.2.3"]).pk,
        "item": WorklistItem.objects.create(patient_id="P1", patient_name="Doe^Jane", modality="CT").pk,
        "burn": BurnJob.objects.create(kind="epson", trigger="manual").pk,
        "token": create_token(instance.series.study).row.pk,
    }


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_anonymous_client_is_asked_to_authenticate(anonymous, one_of_each, endpoint):
    response = anonymous.get(endpoint.format(**one_of_each))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_user_who_is_not_staff_is_refused(a_clerk, one_of_each, endpoint):
    assert a_clerk.get(endpoint.format(**one_of_each)).status_code == 403


STAFF_ONLY = {"/api/", "/api/schema/", "/api/docs/", "/api/redoc/"}


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e not in STAFF_ONLY])
def test_staff_without_the_view_permission_read_nothing(a_staff_member, one_of_each, endpoint):
    response = a_staff_member.get(endpoint.format(**one_of_each))
    assert response.status_code == 403
    assert b"DICM" not in response.content


@pytest.mark.parametrize("endpoint", sorted(STAFF_ONLY))
def test_the_api_root_and_schema_pages_need_staff_only(a_staff_member, endpoint):
    assert a_staff_member.get(endpoint).status_code == 200


def test_the_view_permission_of_a_model_opens_that_model_only(a_staff_member, django_user_model, one_of_each):
    staff = django_user_model.objects.get(username="staff")
    staff.user_permissions.add(Permission.objects.get(codename="view_study"))
    assert a_staff_member.get("/api/studies/").json()["count"] == 1
    assert a_staff_member.get("/api/series/").status_code == 403
    assert a_staff_member.get(f"/api/instances/{one_of_each['instance']}/file").status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_instance"))
    assert a_staff_member.get(f"/api/instances/{one_of_each['instance']}/file").status_code == 200


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_reader_can_read_every_endpoint(a_reader, one_of_each, endpoint):
    response = a_reader.get(endpoint.format(**one_of_each))
    assert response.status_code == 200, response.content[:500]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_staff_can_read_every_endpoint(an_api_admin, one_of_each, endpoint):
    response = an_api_admin.get(endpoint.format(**one_of_each))
    assert response.status_code == 200, response.content[:500]


def test_a_drf_token_authenticates_without_a_session(anonymous, an_api_admin, one_of_each):
    key = Token.objects.create(user=an_api_admin.user).key

    anonymous.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = anonymous.get("/api/studies/")

    assert response.status_code == 200
    assert response.json()["count"] == 1


def test_a_wrong_token_is_refused(anonymous, one_of_each):
    anonymous.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert anonymous.get("/api/studies/").status_code == 401


def test_the_token_of_a_user_who_is_not_staff_is_refused(anonymous, django_user_model, one_of_each):
    key = Token.objects.create(user=django_user_model.objects.create_user("robot")).key
    anonymous.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert anonymous.get("/api/studies/").status_code == 403


def test_the_schema_describes_every_resource_and_its_filters(an_api_admin):
    response = an_api_admin.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    schema = response.json()
    assert schema["info"]["title"] == "PACS server API"
    for path in ["/api/studies/", "/api/instances/{id}/file", "/api/peers/{id}/echo/", "/api/transfers/{id}/cancel/"]:
        assert any(p.rstrip("/") == path.rstrip("/") for p in schema["paths"]), path
    study_filters = {p["name"] for p in schema["paths"]["/api/studies/"]["get"]["parameters"]}
    assert {"patient_id", "patient_name", "date_from", "date_to", "modality", "accession_number"} <= study_filters
    assert "tokenAuth" in schema["components"]["securitySchemes"]


def test_the_swagger_page_loads_its_assets_from_this_server(an_api_admin):
    page = an_api_admin.get("/api/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn.jsdelivr.net" not in page


def test_the_schema_is_valid_openapi_without_warnings(db, tmp_path):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yaml"))
    assert "/api/instances/{id}/file:" in (tmp_path / "schema.yaml").read_text()


def test_the_api_is_browsable_in_a_web_browser(an_api_admin, one_of_each):
    response = an_api_admin.get("/api/studies/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Study List" in response.content.decode()
