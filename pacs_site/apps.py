from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class PacsSiteConfig(AppConfig):
    name = "pacs_site"
    verbose_name = "PACS server"

    def ready(self):
        # Each app's `retention` module registers its pruners (pacs_site/retention.py),
        # found the way the admin finds `admin` modules: no app imports another for it.
        autodiscover_modules("retention")
