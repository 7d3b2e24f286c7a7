"""The DICOMweb resources (PS3.18 10.4, 10.6, 10.5, 9 for WADO-URI), served
under two roots: `/dicomweb/` (staff) and `/dicomweb/t/<token>/` (a patient
link, read-only). One GET/POST may share a path: `methods()` dispatches."""

from django.http import HttpResponseNotAllowed
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from portal.dicomweb import qido, stow, uri, wado
from portal.dicomweb.access import preflight

app_name = "dicomweb"

STUDY = "studies/<str:study>"
SERIES = f"{STUDY}/series/<str:series>"
INSTANCE = f"{SERIES}/instances/<str:instance>"


def methods(**views):
    """One view per HTTP method on one path (405 with Allow otherwise)."""

    def dispatch(request, *args, **kwargs):
        if request.method == "OPTIONS":
            return preflight(request, views)
        view = views.get(request.method) or (views.get("GET") if request.method == "HEAD" else None)
        if view is None:
            return HttpResponseNotAllowed(sorted(views))
        return view(request, *args, **kwargs)

    # STOW-RS checks CSRF itself for session logins (stow.py); API tokens and
    # patient links carry no cookie to forge.
    return csrf_exempt(dispatch)


resources = [
    # QIDO-RS (search) and STOW-RS (store)
    path("studies", methods(GET=qido.search_studies, POST=stow.store), name="studies"),
    path("series", methods(GET=qido.search_series), name="series"),
    path("instances", methods(GET=qido.search_instances), name="instances"),
    path(f"{STUDY}/series", methods(GET=qido.search_series), name="study-series"),
    path(f"{STUDY}/instances", methods(GET=qido.search_instances), name="study-instances"),
    path(f"{SERIES}/instances", methods(GET=qido.search_instances), name="series-instances"),
    # WADO-RS (retrieve)
    path(STUDY, methods(GET=wado.retrieve, POST=stow.store), name="study"),
    path(SERIES, methods(GET=wado.retrieve), name="series-retrieve"),
    path(INSTANCE, methods(GET=wado.retrieve), name="instance"),
    path(f"{STUDY}/metadata", methods(GET=wado.metadata), name="study-metadata"),
    path(f"{SERIES}/metadata", methods(GET=wado.metadata), name="series-metadata"),
    path(f"{INSTANCE}/metadata", methods(GET=wado.metadata), name="instance-metadata"),
    path(f"{INSTANCE}/frames/<str:frames>", methods(GET=wado.frames), name="frames"),
    path(f"{INSTANCE}/bulkdata/<str:tag>", methods(GET=wado.bulkdata), name="bulkdata"),
    path(f"{STUDY}/rendered", methods(GET=wado.rendered), name="study-rendered"),
    path(f"{SERIES}/rendered", methods(GET=wado.rendered), name="series-rendered"),
    path(f"{INSTANCE}/rendered", methods(GET=wado.rendered), name="instance-rendered"),
    path(f"{INSTANCE}/frames/<str:frames>/rendered", methods(GET=wado.rendered), name="frames-rendered"),
    path(f"{STUDY}/thumbnail", methods(GET=wado.thumbnail), name="study-thumbnail"),
    path(f"{SERIES}/thumbnail", methods(GET=wado.thumbnail), name="series-thumbnail"),
    path(f"{INSTANCE}/thumbnail", methods(GET=wado.thumbnail), name="instance-thumbnail"),
    # WADO-URI (PS3.18 9): /dicomweb/wado?requestType=WADO&studyUID=…
    path("wado", methods(GET=uri.wado_uri), name="wado-uri"),
]

urlpatterns = [
    path("dicomweb/", include(resources)),
    path("dicomweb/t/<str:token>/", include((resources, "link"), namespace="link")),
    path("wado", methods(GET=uri.wado_uri), name="wado"),
]
