"""The viewer under /viewer/, from the web process (same origin as /dicomweb/).

- `/viewer/app-config.js`: the staff configuration, built per request.
- `/viewer/<file>`: the unpacked dist/ (fetch.py), streamed a chunk at a
  time; names with a content hash are cached for a year.
- any other path below /viewer/ (OHIF's routes: `/viewer/viewer?…`, the
  study list at `/viewer/`): index.html, for staff (else the admin login).
- `/viewer/link?<token>`: a patient link's viewer.  The token travels in the
  query string, which the access log leaves out (portal/daphne_server.py):
  the page is index.html with the link's configuration inline (its root
  /dicomweb/t/<token>, no study list) and a script that keeps the token in
  the tab's sessionStorage and replaces the address with the study's route
  below /viewer/link/ — the token leaves the address bar, and a reload of
  `/viewer/link/…` (`link_reload`) comes back through /viewer/link?<token>.
"""

import json
import mimetypes
import re
from pathlib import Path

from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import http_date
from django.views.decorators.http import require_GET

from pacs_site import audit_web
from portal.ratelimit import over_limit
from portal.streaming import file_chunks, streamed
from portal.tokens import lookup
from portal.viewer import config, fetch

# webpack's content hash in a file name (app.bundle.0f6159c501addfe9.js,
# 5130ccb17e3f3f5b.wasm): such a file never changes.
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16}\.[a-z0-9]+$")
_CONFIG_TAG = re.compile(r'<script[^>]*src="[^"]*app-config\.js"[^>]*></script>')
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}


def _viewer_dir() -> Path:
    return fetch.viewer_dir()


def _missing_viewer():
    return HttpResponse(
        "The viewer is not installed: run bin/fetch-viewer (bin/run does).",
        status=503,
        content_type="text/plain; charset=utf-8",
    )


def _origin(request) -> str:
    return request.build_absolute_uri("/").rstrip("/")


def _index_html() -> str | None:
    path = _viewer_dir() / "index.html"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def _file(relative: str) -> Path | None:
    """The dist/ file at `relative`, or None (hidden names and escapes too)."""
    if not relative or any(part.startswith(".") or not part for part in relative.split("/")):
        return None
    root = _viewer_dir().resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


def _accepts_gzip(request) -> bool:
    codings = request.headers.get("Accept-Encoding", "")
    return any(c.split(";")[0].strip() == "gzip" and "q=0" not in c.replace(" ", "") for c in codings.split(","))


def _static(request, path: Path):
    """The file, or its gzip copy (fetch.py) for a client that takes gzip."""
    packed = path.with_name(path.name + ".gz")
    sent = packed if packed.is_file() and _accepts_gzip(request) else path
    stat = sent.stat()
    etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}{"-gz" if sent is packed else ""}"'
    if request.headers.get("If-None-Match") == etag:
        response = HttpResponse(status=304)
    else:
        kind = TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        response = streamed(request, file_chunks(sent), content_type=kind)
        response["Content-Length"] = str(stat.st_size)
        if sent is packed:
            response["Content-Encoding"] = "gzip"
    if packed.is_file():
        response["Vary"] = "Accept-Encoding"
    response["ETag"] = etag
    response["Last-Modified"] = http_date(stat.st_mtime)
    if _HASHED.search(path.name):
        response["Cache-Control"] = "public, max-age=31536000, immutable"
    else:  # icons, workers without a hash in their name: the release may change them
        response["Cache-Control"] = "public, max-age=86400"
    return response


def _no_store(response):
    response["Cache-Control"] = "no-store, private"
    return response


@require_GET
def app_config(request):
    script = config.as_script(config.staff_config(_origin(request)))
    return _no_store(HttpResponse(script, content_type="text/javascript; charset=utf-8"))


@require_GET
def page(request, route=""):
    """A dist/ file, or index.html for OHIF's own routes (staff only)."""
    path = _file(route)
    if path is not None:
        return _static(request, path)
    if "." in route.rsplit("/", 1)[-1]:
        raise Http404("no such viewer file")  # a missing asset stays a 404, not the page
    if not request.user.is_active or not request.user.is_staff:
        return redirect_to_login(request.get_full_path(), reverse("admin:login"))
    html = _index_html()
    if html is None:
        return _missing_viewer()
    if "StudyInstanceUIDs" in request.GET:  # OHIF's route that opens studies (not its study list)
        audit_web.viewer(request, ",".join(request.GET.getlist("StudyInstanceUIDs")).split(","))
    return _no_store(HttpResponse(html, content_type="text/html; charset=utf-8"))


def _private(response):
    """As every answer of a patient link (portal/views.py)."""
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    return _no_store(response)


def _link_refusal(request, token):
    if token is None:
        return render(request, "portal/not_found.html", status=404)
    return render(request, "portal/gone.html", {"token": token}, status=410)


_LINK_SCRIPT = """<script>
sessionStorage.setItem("pacs-viewer-link", %(token)s);
history.replaceState(null, "", %(route)s);
</script>"""


@require_GET
def link_page(request):
    """`/viewer/link?<token>`: the viewer on the link's DICOMweb root, opened
    at its studies (checked and counted as the link's page is)."""
    if over_limit(request):
        response = render(request, "portal/too_many.html", status=429)
        response["Retry-After"] = "60"
        return _private(response)
    clear = request.META.get("QUERY_STRING", "")
    token = lookup(clear)
    if token is None or not token.is_usable():
        return _private(_link_refusal(request, token))
    html = _index_html()
    if html is None:
        return _private(_missing_viewer())
    token.record_use()
    uids = list(token.studies().order_by("study_date", "pk").values_list("study_instance_uid", flat=True))
    audit_web.viewer(request, uids, token=token)
    cfg = config.link_config(_origin(request), clear)
    route = config.LINK_BASENAME + config.study_route(uids)
    # json.dumps gives JS string literals; the token is URL-safe base64.
    inline = (
        "<script>"
        + config.as_script(cfg)
        + "</script>"
        + _LINK_SCRIPT
        % {
            "token": json.dumps(clear),
            "route": json.dumps(route).replace("<", "\\u003c"),
        }
    )
    html = _CONFIG_TAG.sub(lambda _: inline, html, count=1)
    return _private(HttpResponse(html, content_type="text/html; charset=utf-8"))


_RELOAD = """<!doctype html><meta charset="utf-8"><title>Viewer</title>
<script>
var token = sessionStorage.getItem("pacs-viewer-link");
if (token) location.replace("%s?" + token);
</script>
<p>Please open the link you were given again.</p>
"""


@require_GET
def link_reload(request, route=""):
    """`/viewer/link/<route>` (a reload, a bookmark): back to the link's page
    with the token this tab keeps; without one, a hint."""
    return _private(HttpResponse(_RELOAD % reverse("viewer:link"), content_type="text/html; charset=utf-8"))
