"""Study tokens over the API: made (the clear token shown once), listed
without it, revoked."""

import hashlib

import pytest

from portal.models import StudyToken
from portal.tokens import lookup
from tests.support.api import archived


@pytest.fixture
def a_study_of_20261120(db, data_dir, tmp_path):
    return archived(tmp_path, study_date="20261120").series.study


def test_an_admin_makes_a_link_and_gets_the_token_once(an_api_admin, a_study_of_20261120):
    response = an_api_admin.post("/api/tokens/", {"study": a_study_of_20261120.pk}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert len(body["token"]) >= 22 and body["url"].endswith(body["token"])
    row = StudyToken.objects.get()
    assert row.token_hash == hashlib.sha256(body["token"].encode()).hexdigest()
    assert (body["state"], body["scope"], body["created_by"]) == ("usable", "study", "apiadmin")
    assert lookup(body["token"]) == row
    # Listed afterwards without the token or its hash.
    listed = an_api_admin.get("/api/tokens/").json()["results"][0]
    assert "token" not in listed and "token_hash" not in listed
    assert body["token"] not in an_api_admin.get(f"/api/tokens/{row.pk}/").content.decode()


def test_a_link_for_all_studies_of_the_patient(an_api_admin, a_study_of_20261120):
    response = an_api_admin.post("/api/tokens/", {"study": a_study_of_20261120.pk, "scope": "patient"}, format="json")
    assert response.status_code == 201
    assert StudyToken.objects.get().scope == "patient"


def test_a_token_for_an_unknown_study_is_refused(an_api_admin, a_study_of_20261120):
    response = an_api_admin.post("/api/tokens/", {"study": a_study_of_20261120.pk + 100}, format="json")
    assert response.status_code == 400
    assert "study" in response.json()
    assert not StudyToken.objects.exists()


def test_revoking_a_token(an_api_admin, a_study_of_20261120):
    token = an_api_admin.post("/api/tokens/", {"study": a_study_of_20261120.pk}, format="json").json()

    response = an_api_admin.post(f"/api/tokens/{token['id']}/revoke/")

    assert response.status_code == 200
    assert response.json()["state"] == "revoked"
    assert lookup(token["token"]).is_revoked()
    assert an_api_admin.get(f"/api/tokens/?study={a_study_of_20261120.pk}").json()["results"][0]["state"] == "revoked"


def test_a_reader_may_not_make_or_revoke_tokens(a_reader, an_api_admin, a_study_of_20261120):
    made = an_api_admin.post("/api/tokens/", {"study": a_study_of_20261120.pk}, format="json").json()

    assert a_reader.post("/api/tokens/", {"study": a_study_of_20261120.pk}, format="json").status_code == 403
    assert a_reader.post(f"/api/tokens/{made['id']}/revoke/").status_code == 403
    assert a_reader.get("/api/tokens/").json()["count"] == 1
    assert not lookup(made["token"]).is_revoked()


def test_anonymous_and_non_staff_clients_cannot_make_tokens(anonymous, a_clerk, a_study_of_20261120):
    assert anonymous.post("/api/tokens/", {"study": a_study_of_20261120.pk}, format="json").status_code == 401
    assert a_clerk.post("/api/tokens/", {"study": a_study_of_20261120.pk}, format="json").status_code == 403
    assert not StudyToken.objects.exists()
