from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class PacsSiteConfig(AppConfig):
    name = "pacs_site"
    verbose_name = "PACS server"

    def ready(self):
        from pacs_site import audit_signals
        from pacs_site.config_io import SingletonSection, register
        from pacs_site.models import RetentionSettings
        from pacs_site.retention import register_pruner

        register(SingletonSection("retention", RetentionSettings))
        # Each app's `retention` module registers its pruners (pacs_site/retention.py),
        # found the way the admin finds `admin` modules: no app imports another for it.
        autodiscover_modules("retention")
        register_pruner("audit events", audit_signals.prune_audit_events)
        # The audit trail's hooks: logins, admin changes, burns, transfers, runscp's associations.
        audit_signals.connect()
