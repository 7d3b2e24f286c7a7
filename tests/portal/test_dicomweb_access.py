"""Who reaches which DICOMweb resource: every route of both roots, for every
persona (`access.py`).  The resources themselves are tested with
dicomweb-client in the other test_dicomweb_* files."""

import datetime as dt

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dicomnodes.models import Patient, Study
from portal.dicomweb.urls import resources
from portal.tokens import create_token

pytestmark = pytest.mark.django_db

UIDS = {"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5", "frames": "1", "tag": "7FE00010"}
ROUTES = [route.name for route in resources]
REFUSALS = {401, 403, 404, 410, 429}


def _url(name, *, token=None):
    route = next(r for r in resources if r.name == name)
    kwargs = {key: UIDS[key] for key in route.pattern.converters}
    if token is None:
        return reverse(f"dicomweb:{name}", kwargs=kwargs)
    return reverse(f"dicomweb:link:{name}", kwargs={**kwargs, "token": token})


@pytest.fixture(autouse=True)
def fresh_rate_limit():
    """Every test starts with no lookups counted for its address."""
    cache.clear()


@pytest.fixture
def study():
    patient = Patient.objects.create(patient_id="P1", patient_name="Doe^Jane")
    return Study.objects.create(study_instance_uid="1.2.3", patient_record=patient, patient_id="P1")


@pytest.fixture
def api_token_reader(django_user_model):
    """Staff with the view permissions, authenticated by an API token (no session)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("tokenreader", password=None, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.mark.parametrize("name", ROUTES)
def test_anonymous_gets_401_with_a_challenge(anonymous, name):
    response = anonymous.get(_url(name))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")


@pytest.mark.parametrize("name", ROUTES)
def test_staff_without_view_permissions_gets_403(a_staff_member, name):
    assert a_staff_member.get(_url(name)).status_code == 403


@pytest.mark.parametrize("name", ROUTES)
def test_a_logged_in_non_staff_account_gets_403(a_clerk, name):
    assert a_clerk.get(_url(name)).status_code == 403


@pytest.mark.parametrize("name", ROUTES)
def test_a_reader_is_let_through_by_session_and_by_api_token(a_reader, api_token_reader, name):
    for client in (a_reader, api_token_reader):
        assert client.get(_url(name)).status_code not in {401, 403, 410, 429}


def test_a_wrong_api_token_gets_401(anonymous):
    anonymous.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert anonymous.get(_url("studies")).status_code == 401


@pytest.mark.parametrize("name", ROUTES)
def test_an_unknown_link_gets_404(anonymous, name):
    assert anonymous.get(_url(name, token="x" * 64)).status_code == 404


@pytest.mark.parametrize("name", ROUTES)
def test_a_revoked_link_gets_410(anonymous, study, name):
    new = create_token(study)
    new.row.revoke()
    assert anonymous.get(_url(name, token=new.clear)).status_code == 410


def test_an_expired_link_gets_410_and_a_valid_one_is_let_through(anonymous, study):
    expired, valid = create_token(study), create_token(study)
    expired.row.expires_at = timezone.now() - dt.timedelta(minutes=1)
    expired.row.save()
    assert anonymous.get(_url("studies", token=expired.clear)).status_code == 410
    response = anonymous.get(_url("studies", token=valid.clear))
    assert response.status_code not in REFUSALS - {404}
    assert response["Cache-Control"] == "no-store, private"
    assert response["Referrer-Policy"] == "no-referrer"


def test_a_link_never_stores(anonymous, study):
    new = create_token(study)
    response = anonymous.post(
        _url("studies", token=new.clear), b"", content_type='multipart/related; type="application/dicom"; boundary=x'
    )
    assert response.status_code == 403


def test_unknown_links_are_rate_limited_per_address(anonymous, settings):
    settings.PACS_TOKEN_LOOKUPS_PER_MINUTE = 3
    answers = [anonymous.get(_url("studies", token=f"guess{n}")).status_code for n in range(5)]
    assert answers[:3] == [404, 404, 404]
    assert answers[3:] == [429, 429]


def test_a_valid_links_requests_are_not_counted(anonymous, study, settings):
    settings.PACS_TOKEN_LOOKUPS_PER_MINUTE = 3
    new = create_token(study)
    answers = {anonymous.get(_url("series", token=new.clear)).status_code for _ in range(10)}
    assert not answers & {429, 404, 410}


def test_cors_is_off_unless_an_origin_is_configured(a_reader, settings):
    settings.PACS_DICOMWEB_CORS_ORIGINS = ["https://viewer.example"]
    other = a_reader.get(_url("studies"), HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in other
    allowed = a_reader.get(_url("studies"), HTTP_ORIGIN="https://viewer.example")
    assert allowed["Access-Control-Allow-Origin"] == "https://viewer.example"
    assert "Origin" in allowed["Vary"]


def test_a_preflight_from_an_allowed_origin_allows_the_token_header(anonymous, settings):
    settings.PACS_DICOMWEB_CORS_ORIGINS = ["https://viewer.example"]
    response = anonymous.options(
        _url("studies"), HTTP_ORIGIN="https://viewer.example", HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET"
    )
    assert response.status_code == 204
    assert "Authorization" in response["Access-Control-Allow-Headers"]
    assert "GET" in response["Access-Control-Allow-Methods"]
    refused = anonymous.options(_url("studies"), HTTP_ORIGIN="https://evil.example")
    assert "Access-Control-Allow-Origin" not in refused


def test_the_api_token_also_works_as_a_bearer_token_and_a_password_as_basic(anonymous, django_user_model):
    import base64

    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("slicer", password="s3cret-pass", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    key = Token.objects.create(user=user).key
    anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert anonymous.get(_url("studies")).status_code not in {401, 403}
    basic = base64.b64encode(b"slicer:s3cret-pass").decode()
    anonymous.credentials(HTTP_AUTHORIZATION=f"Basic {basic}")
    assert anonymous.get(_url("studies")).status_code not in {401, 403}
    wrong = base64.b64encode(b"slicer:wrong").decode()
    anonymous.credentials(HTTP_AUTHORIZATION=f"Basic {wrong}")
    assert anonymous.get(_url("studies")).status_code == 401
    anonymous.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert anonymous.get(_url("studies")).status_code == 401
