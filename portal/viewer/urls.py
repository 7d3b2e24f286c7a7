"""/viewer/: the OHIF viewer (portal/viewer/views.py).  Order matters: the
configuration and the patient link's pages before the files and routes."""

from django.urls import path

from portal.viewer import views

app_name = "viewer"

urlpatterns = [
    path("viewer/app-config.js", views.app_config, name="app-config"),
    path("viewer/link", views.link_page, name="link"),
    path("viewer/link/<path:route>", views.link_reload, name="link-reload"),
    path("viewer/viewer", views.page, {"route": "viewer"}, name="study"),
    path("viewer/", views.page, name="index"),
    path("viewer/<path:route>", views.page, name="page"),
]
