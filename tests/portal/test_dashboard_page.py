"""The dashboard page: staff only, with the institution and department of
the HTTP settings at the top."""

from portal.models import HttpSettings


def test_an_anonymous_visitor_is_sent_to_the_login_page(client, db):
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login/?next=/dashboard/")


def test_a_user_who_is_not_staff_does_not_see_it(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("clerk"))
    response = client.get("/dashboard/")
    assert response.status_code == 302
    assert "/admin/login/" in response.headers["Location"]


def test_staff_see_the_live_tables_under_the_institution(client, django_user_model):
    HttpSettings.objects.update_or_create(pk=1, defaults={"institution": "St. Elsewhere", "department": "Radiology"})
    client.force_login(django_user_model.objects.create_user("staff", is_staff=True))

    page = client.get("/dashboard/").content.decode()

    assert "St. Elsewhere" in page and "Radiology" in page
    for table in ["dash-event", "dash-association", "dash-transfer", "dash-burn", "dash-hl7"]:
        assert f'id="{table}"' in page
    assert 'data-ws="/ws/dashboard/"' in page
    assert "portal/dashboard.js" in page
