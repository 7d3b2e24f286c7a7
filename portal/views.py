"""Token pages: `/token?<token>` shows the studies a token opens, with series
previews and a ZIP download (DICOM File-set with DICOMDIR).

The token travels in the query string only (never in a path: access logs
keep paths, and ours drop query strings).  Every answer carries
`Referrer-Policy: no-referrer` so the token does not leak to other sites,
and `Cache-Control: no-store`.

Personas: a patient with a token, a stranger guessing tokens.
"""

import datetime as dt
import functools
import logging

from django.db.models import Prefetch
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from dicomnodes.models import Instance, Series
from pacs_site import audit_web
from pacs_site.audit import Action
from portal import previews
from portal.download import fileset_zip
from portal.models import HttpSettings
from portal.ratelimit import over_limit
from portal.streaming import streamed
from portal.tokens import lookup

logger = logging.getLogger(__name__)


def _private(view):
    """Headers for every token answer (errors included)."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        response = view(request, *args, **kwargs)
        response["Referrer-Policy"] = "no-referrer"
        response["Cache-Control"] = "no-store, private"
        response["X-Robots-Tag"] = "noindex, nofollow"
        return response

    return wrapper


def _clear_token(request) -> str:
    """`/token?<token>` (also accepts `?token=<token>`)."""
    raw = request.META.get("QUERY_STRING", "")
    return raw.removeprefix("token=")


class _Refused(Exception):
    def __init__(self, response):
        self.response = response


def _resolve(request, *, counted=True):
    """The usable token of this request, or _Refused with the answer to give:
    429 over the rate limit, 404 unknown, 410 expired or revoked.

    `counted=False` (previews of a page already opened) counts only failures
    against the rate limit, so a page with many series does not use it up.
    """
    if counted and over_limit(request):
        raise _Refused(_too_many(request))
    token = lookup(_clear_token(request))
    if token is None:
        if not counted and over_limit(request):
            raise _Refused(_too_many(request))
        raise _Refused(render(request, "portal/not_found.html", status=404))
    if not token.is_usable():
        raise _Refused(render(request, "portal/gone.html", {"token": token}, status=410))
    return token


def _too_many(request):
    response = render(request, "portal/too_many.html", status=429)
    response["Retry-After"] = "60"
    return response


def _refusals(view):
    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except _Refused as refused:
            return refused.response

    return wrapper


def _dicom_date(text):
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except (TypeError, ValueError):
        return None


def _person_name(pn: str) -> str:
    """DICOM PN "Family^Given^Middle^Prefix^Suffix" (first group) as "Family, Given Middle"."""
    parts = [p.strip() for p in pn.split("=")[0].split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:3] if p)
    return f"{family}, {rest}" if family and rest else family or rest


@require_GET
@_private
@_refusals
def token_page(request):
    token = _resolve(request)
    token.record_use()
    audit_web.link(request, token, Action.LINK_OPEN)
    studies = token.studies().prefetch_related(
        Prefetch("series", queryset=Series.objects.order_by("series_number", "series_instance_uid"))
    )
    study = token.study
    context = {
        "token": token,
        "clear_token": _clear_token(request),
        "patient_name": _person_name(study.patient_name),
        "patient_id": study.patient_id,
        "birth_date": _dicom_date(study.patient_birth_date),
        "studies": [
            {
                "row": s,
                "date": _dicom_date(s.study_date),
                "modalities": s.modalities_in_study.replace("\\", ", "),
                "series": list(s.series.all()),
            }
            for s in studies
        ],
    }
    return render(request, "portal/token.html", context)


@require_GET
@_private
@_refusals
def series_preview(request, series_pk):
    token = _resolve(request, counted=False)
    series = get_object_or_404(Series, pk=series_pk, study__in=token.studies())
    budget = HttpSettings.load().preview_max_megapixels * 1_000_000
    try:
        path = previews.series_preview(series, max_pixels=budget)
    except previews.NoPreview as exc:
        logger.info("no preview for series %d: %s", series.pk, exc)
        too_large = isinstance(exc, previews.OverBudget)
        text = "This image is too large for a preview." if too_large else "No preview for this series."
        return HttpResponse(text, status=404, content_type="text/plain; charset=utf-8")
    # A few kB: a plain response (a file iterator would be read whole under ASGI anyway).
    return HttpResponse(path.read_bytes(), content_type="image/png")


@require_GET
@_private
@_refusals
def study_download(request, study_pk):
    token = _resolve(request)
    study = get_object_or_404(token.studies(), pk=study_pk)
    token.record_use()
    audit_web.link(request, token, Action.LINK_DOWNLOAD, study=study)
    instances = Instance.objects.filter(series__study=study).order_by(
        "series_id", "instance_number", "sop_instance_uid"
    )
    paths = [i.path for i in instances.only("sop_instance_uid")]
    chunks = fileset_zip(paths)
    response = streamed(request, chunks, content_type="application/zip")
    day = "".join(c for c in study.study_date if c.isdigit()) or "undated"
    name = f"study-{day}-{study.pk}.zip"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
