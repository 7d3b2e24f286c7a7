from django.contrib import admin
from django.urls import path

admin.site.site_header = "PACS server administration"
admin.site.site_title = "PACS server"

urlpatterns = [
    path("admin/", admin.site.urls),
]
