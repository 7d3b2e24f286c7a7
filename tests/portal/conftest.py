"""Fixtures of the portal tests (REST API, dashboard, patient links).

Personas of the API tests: `anonymous` (no login), `a_clerk` (logged in,
not staff), `a_staff_member` (staff, no model permissions), `a_reader`
(staff with every view permission and nothing else), `an_api_admin` (a
superuser).
"""

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient

from dicomnodes.models import Peer
from tests.support.browser import chromium_process, connected_browser


@pytest.fixture
def anonymous():
    return APIClient()


@pytest.fixture
def a_clerk(django_user_model):
    client = APIClient()
    client.force_login(django_user_model.objects.create_user("clerk", password=None))
    return client


@pytest.fixture
def a_staff_member(django_user_model):
    client = APIClient()
    client.force_login(django_user_model.objects.create_user("staff", password=None, is_staff=True))
    return client


@pytest.fixture
def a_reader(django_user_model):
    """Staff who may view everything the API lists, and change nothing."""
    user = django_user_model.objects.create_user("reader", password=None, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def an_api_admin(django_user_model):
    client = APIClient()
    client.user = django_user_model.objects.create_superuser("apiadmin", "", None)
    client.force_login(client.user)
    return client


@pytest.fixture
def orthanc_peer(db):
    """A peer row for a remote PACS (nothing listens: for rows, not for the network)."""
    return Peer.objects.create(name="Orthanc", ae_title="ORTHANC", host="127.0.0.1", port=4242)


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """One headless Chromium for the run; its DevTools endpoint."""
    with chromium_process(tmp_path_factory.mktemp("chromium")) as endpoint:
        yield endpoint


@pytest.fixture
def browser(chromium, monkeypatch):
    """The shared Chromium, connected for this test (pages in contexts of
    their own).  Playwright's sync API keeps an event loop in this thread
    while connected, hence a connection per test; the test's own ORM calls
    are plain synchronous code between its calls, so Django's guard against
    ORM use in a coroutine is lifted (in this process only: the servers
    under test keep it)."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with connected_browser(chromium) as connected:
        yield connected
