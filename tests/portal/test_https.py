"""Answers over HTTPS get Secure cookies and HSTS whenever TLS is on, not only
with PACS_PRODUCTION=1; answers over plain HTTP are left alone."""


def test_an_answer_over_https_marks_its_cookies_secure_and_sends_hsts(client, db):
    response = client.get("/admin/login/", secure=True)
    assert response.status_code == 200
    assert response.cookies["csrftoken"]["secure"] is True
    assert response["Strict-Transport-Security"] == "max-age=31536000"


def test_a_login_over_https_gets_a_secure_session_cookie(client, django_user_model):
    django_user_model.objects.create_superuser("admin", "", "a-long-password-1")
    page = client.get("/admin/login/", secure=True)
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "admin", "password": "a-long-password-1", "csrfmiddlewaretoken": page.cookies["csrftoken"].value},
        secure=True,
    )
    assert response.status_code == 302
    assert response.cookies["sessionid"]["secure"] is True


def test_an_answer_over_plain_http_is_left_alone(client, db):
    response = client.get("/admin/login/")
    assert not response.cookies["csrftoken"]["secure"]
    assert "Strict-Transport-Security" not in response


def test_hsts_0_sends_no_header_over_https(client, db, settings):
    settings.PACS_HSTS_SECONDS = 0
    response = client.get("/admin/login/", secure=True)
    assert response.cookies["csrftoken"]["secure"] is True
    assert "Strict-Transport-Security" not in response
