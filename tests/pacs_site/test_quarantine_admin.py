"""The quarantine in the admin: count, size, download and delete, for those
allowed to see (and delete) stored instances; no path from the request."""

import uuid

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

pytestmark = pytest.mark.django_db

LIST = "admin:pacs_site_quarantine"


def quarantined(data_dir, content=b"DICM?"):
    folder = data_dir / "quarantine"
    folder.mkdir(exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.dcm"
    path.write_bytes(content)
    return path


@pytest.fixture
def a_viewer(client, django_user_model):
    """Persona: staff who may view instances, not delete them."""
    user = django_user_model.objects.create_user("viewer", password=None, is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_instance"))
    client.force_login(user)
    return client


@pytest.fixture
def a_bare_staff(client, django_user_model):
    """Persona: staff without any permission."""
    client.force_login(django_user_model.objects.create_user("bare", password=None, is_staff=True))
    return client


def test_the_admin_shows_how_many_files_are_quarantined_and_their_size(an_admin, data_dir):
    first = quarantined(data_dir, b"x" * 1000)
    second = quarantined(data_dir, b"y" * 2000)
    page = an_admin.get(reverse(LIST))
    assert page.status_code == 200
    text = page.content.decode()
    assert '<strong id="quarantine-count">2</strong>' in text
    assert '<strong id="quarantine-size">2.9\xa0KB</strong>' in text
    assert first.name in text and second.name in text


def test_the_retention_settings_page_links_to_the_quarantine(an_admin, data_dir):
    quarantined(data_dir)
    page = an_admin.get(reverse("admin:pacs_site_retentionsettings_changelist"), follow=True)
    assert "1 files" in page.content.decode()
    assert reverse(LIST) in page.content.decode()


def test_a_quarantined_file_downloads_as_it_was_kept(a_viewer, data_dir):
    path = quarantined(data_dir, b"the bytes as received")
    answer = a_viewer.get(reverse("admin:pacs_site_quarantine_download", args=[path.name]))
    assert answer.status_code == 200
    assert b"".join(answer.streaming_content) == b"the bytes as received"
    assert f'filename="{path.name}"' in answer["Content-Disposition"]


def test_a_name_that_is_not_a_quarantine_name_is_not_found(an_admin, data_dir):
    (data_dir / "quarantine").mkdir()
    (data_dir / "quarantine" / "secret.dcm").write_bytes(b"not ours to serve")
    (data_dir / "outside.dcm").write_bytes(b"outside")
    for name in ["secret.dcm", "ABCDEF" + "0" * 26 + ".dcm", "..", "%2E%2E%2Foutside.dcm"]:
        url = reverse("admin:pacs_site_quarantine_download", args=["x"]).replace("/x/", f"/{name}/")
        answer = an_admin.get(url)
        assert answer.status_code in (404, 302), name  # 302: the admin's catch-all for a "/" in the name
        assert not answer.streaming, name


def test_an_administrator_deletes_a_quarantined_file(an_admin, data_dir):
    path = quarantined(data_dir)
    answer = an_admin.post(reverse("admin:pacs_site_quarantine_delete", args=[path.name]))
    assert answer.status_code == 302
    assert not path.exists()


def test_deleting_needs_a_post(an_admin, data_dir):
    path = quarantined(data_dir)
    assert an_admin.get(reverse("admin:pacs_site_quarantine_delete", args=[path.name])).status_code == 405
    assert path.exists()


def test_who_may_only_view_instances_lists_and_downloads_but_does_not_delete(a_viewer, data_dir):
    path = quarantined(data_dir)
    assert 'value="Delete"' not in a_viewer.get(reverse(LIST)).content.decode()
    assert a_viewer.post(reverse("admin:pacs_site_quarantine_delete", args=[path.name])).status_code == 403
    assert path.exists()


def test_staff_without_permissions_sees_nothing_of_the_quarantine(a_bare_staff, data_dir):
    path = quarantined(data_dir)
    assert a_bare_staff.get(reverse(LIST)).status_code == 403
    assert a_bare_staff.get(reverse("admin:pacs_site_quarantine_download", args=[path.name])).status_code == 403


def test_a_stranger_is_sent_to_the_login_page(client, data_dir):
    path = quarantined(data_dir)
    answer = client.get(reverse("admin:pacs_site_quarantine_download", args=[path.name]))
    assert answer.status_code == 302 and "/login/" in answer["Location"]
