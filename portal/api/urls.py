"""/api/: the router's resources, the OpenAPI schema and its two viewers."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from portal.api import views
from portal.api.corrections import PatientMergeView

app_name = "api"

router = DefaultRouter()
router.register("studies", views.StudyViewSet, basename="study")
router.register("series", views.SeriesViewSet, basename="series")
router.register("instances", views.InstanceViewSet, basename="instance")
router.register("peers", views.PeerViewSet, basename="peer")
router.register("transfers", views.TransferJobViewSet, basename="transferjob")
router.register("worklist", views.WorklistItemViewSet, basename="worklistitem")
router.register("burnjobs", views.BurnJobViewSet, basename="burnjob")
router.register("tokens", views.StudyTokenViewSet, basename="studytoken")

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api:schema"), name="redoc"),
    path("instances/<int:pk>/file", views.InstanceFileView.as_view(), name="instance-file"),
    path("patients/merge/", PatientMergeView.as_view(), name="patient-merge"),
    *router.urls,
]
