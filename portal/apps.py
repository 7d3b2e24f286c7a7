from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self):
        from pacs_site.config_io import SingletonSection, register
        from portal.models import HttpSettings

        register(SingletonSection("http", HttpSettings))
