from django.urls import path

from portal import views

app_name = "portal"

urlpatterns = [
    path("token", views.token_page, name="token"),
    path("token/preview/<int:series_pk>", views.series_preview, name="preview"),
    path("token/download/<int:study_pk>", views.study_download, name="download"),
]
