"""Who may see and store what through DICOMweb: one `Scope` per request.

1. Staff: a session (the admin's login), an API token (`Authorization:
   Token …` or `Bearer …`) or a user name and password (`Basic …`). Reading needs the view permissions of
   studies and instances, as the admin and the API do; STOW-RS needs the
   add permission of instances. No login: 401; a login without them: 403.
2. A patient link: `/dicomweb/t/<token>/…` — read-only, the link's study
   (or all its patient's studies, as its page shows them). Unknown token:
   404; expired or revoked: 410; only failed lookups count against the
   per-address rate limit (a viewer makes hundreds of requests per study).
   The token is in the path because a viewer appends resource paths to a
   root; the web process's access log writes `/dicomweb/t/…/` in its place
   (portal/daphne_server.py).

`dicomweb_view` wraps every view: it resolves the scope, refuses what the
scope does not allow, and adds the headers every answer carries.

3. CORS is off unless `PACS_DICOMWEB_CORS_ORIGINS` lists origins: a request
   from one of them gets Access-Control-Allow-Origin (and a preflight its
   answer, `preflight()`); any other origin gets no CORS header, so the
   browser keeps its page out.
"""

import functools
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from rest_framework.authentication import BasicAuthentication, TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from dicomnodes.models import Instance, Series, Study
from pacs_site import audit_web
from portal.ratelimit import over_limit
from portal.tokens import lookup

READ_PERMISSIONS = ("dicomnodes.view_study", "dicomnodes.view_series", "dicomnodes.view_instance")
STORE_PERMISSION = "dicomnodes.add_instance"


@dataclass(frozen=True)
class Scope:
    """The studies a request may reach (`study_pks` None: all of them)."""

    study_pks: frozenset | None = None
    may_store: bool = False
    token: object = None  # the StudyToken of a patient link, else None
    user: object = None  # the staff user (the audit trail's actor)

    def studies(self):
        studies = Study.objects.all()
        return studies if self.study_pks is None else studies.filter(pk__in=self.study_pks)

    def series(self):
        series = Series.objects.all()
        return series if self.study_pks is None else series.filter(study_id__in=self.study_pks)

    def instances(self):
        instances = Instance.objects.all()
        return instances if self.study_pks is None else instances.filter(series__study_id__in=self.study_pks)


def error(status, message):
    """An error answer: a short JSON body a person can read."""
    return JsonResponse({"error": message}, status=status)


def staff_scope(request):
    """(Scope, None) or (None, the refusal) for a staff request."""
    user = request.user if request.user.is_authenticated else None
    for scheme in () if user else _SCHEMES:
        try:
            found = scheme().authenticate(request)
        except AuthenticationFailed as exc:
            return None, _unauthorised(str(exc.detail))
        if found:
            user = found[0]
            break
    if user is None:
        return None, _unauthorised("log in, or send Authorization: Token <API token>")
    if not (user.is_active and user.is_staff and user.has_perms(READ_PERMISSIONS)):
        return None, error(403, "this account may not view the archive")
    return Scope(may_store=user.has_perm(STORE_PERMISSION), user=user), None


class BearerAuthentication(TokenAuthentication):
    """The API token as `Authorization: Bearer …` (3D Slicer's DICOMweb
    import sends its access token so)."""

    keyword = "Bearer"


# `Authorization: Token …` (DRF), `Bearer …` (the same token) and `Basic …`
# (user name and password: Weasis's DICOMweb settings offer nothing else).
_SCHEMES = (TokenAuthentication, BearerAuthentication, BasicAuthentication)


def token_scope(request, clear):
    """(Scope, None) or (None, the refusal) for a patient link's root."""
    token = lookup(clear)
    if token is None:
        if over_limit(request):
            response = error(429, "too many unknown links from this address; wait a minute")
            response["Retry-After"] = "60"
            return None, response
        return None, error(404, "no such link")
    if not token.is_usable():
        return None, error(410, "this link has expired or was revoked")
    return Scope(study_pks=frozenset(token.studies().values_list("pk", flat=True)), token=token), None


def _unauthorised(message):
    response = error(401, message)
    response["WWW-Authenticate"] = 'Token realm="dicomweb"'
    return response


def dicomweb_view(view):
    """Resolve the scope (`token` in the URL: a patient link), then call
    `view(request, scope, **kwargs)`."""

    @functools.wraps(view)
    def wrapper(request, *args, token=None, **kwargs):
        scope, refusal = token_scope(request, token) if token is not None else staff_scope(request)
        if refusal is None and request.method not in ("GET", "HEAD") and not scope.may_store:
            refusal = error(403, "this link is read-only" if token is not None else "this account may not store")
        response = refusal if refusal is not None else view(request, scope, *args, **kwargs)
        if refusal is None:
            audit_web.dicomweb(request, view.__name__, scope, kwargs, response)
        if token is not None:
            response["Cache-Control"] = "no-store, private"
            response["Referrer-Policy"] = "no-referrer"
        return allow_origin(request, response)

    return wrapper


def _allowed_origin(request):
    origin = request.headers.get("Origin", "")
    return origin if origin and origin in settings.PACS_DICOMWEB_CORS_ORIGINS else ""


def allow_origin(request, response):
    """CORS headers for an allowed origin (credentials: API tokens travel in
    a header, which the preflight allows)."""
    origin = _allowed_origin(request)
    if origin:
        response["Access-Control-Allow-Origin"] = origin
        response["Vary"] = "Origin"
        response["Access-Control-Expose-Headers"] = "Content-Type, Content-Length, Warning"
    return response


def preflight(request, methods):
    """The answer to an OPTIONS request (a CORS preflight or not)."""
    response = HttpResponse(status=204)
    response["Allow"] = ", ".join(sorted({*methods, "OPTIONS"}))
    if _allowed_origin(request):
        allow_origin(request, response)
        response["Access-Control-Allow-Methods"] = response["Allow"]
        response["Access-Control-Allow-Headers"] = "Authorization, Accept, Content-Type"
        response["Access-Control-Max-Age"] = "600"
    return response
