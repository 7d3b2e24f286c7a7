from django.contrib import admin
from django.urls import include, path

from portal.dashboard import dashboard

admin.site.site_header = "PACS server administration"
admin.site.site_title = "PACS server"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("portal.urls")),
    path("api/", include("portal.api.urls")),
    path("dashboard/", dashboard, name="dashboard"),
    path("", include("portal.dicomweb.urls")),
    path("", include("portal.viewer.urls")),
]
