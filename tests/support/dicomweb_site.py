"""A running web process for DICOMweb clients, and the staff accounts that
call it with an API token (`Authorization: Token …`).

Personas: `a_stower` (staff who may view and store), `a_viewer` (staff who
may view only).
"""

import contextlib

import requests
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

from portal.models import HttpSettings
from tests.support.portal import start_runpacs_web, wait_for_web
from tests.support.processes import free_port


@contextlib.contextmanager
def running_web(data_dir, log_path):
    """`runpacs --only web` on a free port (saved in the HTTP settings); yields
    the base URL (`http://127.0.0.1:PORT`)."""
    port = free_port()
    http = HttpSettings.load()
    http.web_port, http.web_server_name = port, "127.0.0.1"
    http.save()
    web = start_runpacs_web(data_dir, log_path)
    try:
        wait_for_web(f"http://127.0.0.1:{port}/admin/login/", web)
        yield f"http://127.0.0.1:{port}", web
    finally:
        web.stop()


def staff_with_token(django_user_model, username, *, codenames):
    """(user, API token key) of a staff account with these permissions."""
    user = django_user_model.objects.create_user(username, password=None, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="dicomnodes", codename__in=codenames))
    return user, Token.objects.create(user=user).key


VIEW = ["view_study", "view_series", "view_instance"]
STORE = [*VIEW, "add_instance"]


def token_session(key):
    """A requests.Session that sends the API token (for dicomweb-client)."""
    session = requests.Session()
    session.headers["Authorization"] = f"Token {key}"
    return session
