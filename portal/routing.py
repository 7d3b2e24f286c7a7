"""Websocket routes (pacs_site/asgi.py serves them)."""

from django.urls import path

from portal.consumers import DashboardConsumer

websocket_urlpatterns = [
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
]
