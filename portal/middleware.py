"""HTTPS answers get secure cookies and HSTS whenever TLS is on.

TLS is a runtime setting (HTTP server settings in the admin), so Django's
static SESSION_COOKIE_SECURE / SECURE_HSTS_SECONDS (set by PACS_PRODUCTION=1)
cannot follow it.  This middleware does, per request: an answer to a request
that came over HTTPS marks every cookie it sets Secure and carries
Strict-Transport-Security (PACS_HSTS_SECONDS, default one year).  Answers
over plain HTTP are left alone: with TLS off there is no HTTPS to insist on.
"""

from django.conf import settings


class SecureOverHttpsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.is_secure():
            for morsel in response.cookies.values():
                morsel["secure"] = True
            seconds = getattr(settings, "PACS_HSTS_SECONDS", 31536000)
            if seconds and "Strict-Transport-Security" not in response:
                response["Strict-Transport-Security"] = f"max-age={seconds}"
        return response
