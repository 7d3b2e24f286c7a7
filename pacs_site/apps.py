from django.apps import AppConfig


class PacsSiteConfig(AppConfig):
    name = "pacs_site"
    verbose_name = "PACS server"
