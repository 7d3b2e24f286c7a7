"""Personas and archive rows for the API tests (tests/test_api_*.py).

Personas: `anonymous` (no login), `a_clerk` (logged in, not staff),
`a_staff_member` (staff, no model permissions), `an_api_admin` (a superuser).
A test module imports the fixtures it uses as `<persona>_fixture`.
"""

import shutil
import uuid

import pytest
from rest_framework.test import APIClient

from dicomnodes.archive.header import read_header_file
from dicomnodes.archive.index import IndexItem, apply_batch
from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance
from tests.dicomdata import make_ct


@pytest.fixture(name="anonymous")
def anonymous_fixture():
    return APIClient()


@pytest.fixture(name="a_clerk")
def a_clerk_fixture(django_user_model):
    client = APIClient()
    client.force_login(django_user_model.objects.create_user("clerk", password=None))
    return client


@pytest.fixture(name="a_staff_member")
def a_staff_member_fixture(django_user_model):
    client = APIClient()
    client.force_login(django_user_model.objects.create_user("staff", password=None, is_staff=True))
    return client


@pytest.fixture(name="an_api_admin")
def an_api_admin_fixture(django_user_model):
    client = APIClient()
    client.user = django_user_model.objects.create_superuser("apiadmin", "", None)
    client.force_login(client.user)
    return client


def archived(folder, **make_ct_arguments) -> Instance:
    """A generated CT image stored and indexed as runscp would (file under
    its hashed name, rows by `apply_batch`); returns its Instance row."""
    source = make_ct(folder / f"{uuid.uuid4().hex}.dcm", size=8, **make_ct_arguments)
    header = read_header_file(source)
    target = instance_path(header.sop_instance_uid)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    apply_batch([IndexItem(header=header, file_size=source.stat().st_size, file_is_new=True, overwrite=False)])
    return Instance.objects.select_related("series__study").get(sop_instance_uid=header.sop_instance_uid)
