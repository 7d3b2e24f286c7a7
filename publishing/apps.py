from django.apps import AppConfig


class PublishingConfig(AppConfig):
    name = "publishing"
    verbose_name = "Publishing (CD/DVD)"

    def ready(self):
        from django.db.models.signals import post_save

        from dicomnodes.signals import association_closed, scp_started
        from pacs_site.config_io import ListSection, SingletonSection, register
        from publishing import clock
        from publishing.models import Publisher, PublishingSettings
        from publishing.tasks import on_publisher_saved
        from publishing.triggers import on_association_closed

        association_closed.connect(on_association_closed, dispatch_uid="publishing.on_association_closed")
        # runscp keeps the clock: delayed burn jobs on time, robot status every few seconds.
        scp_started.connect(clock.on_scp_started, dispatch_uid="publishing.clock")
        # A default publisher saved: the jobs that waited for one go at once.
        post_save.connect(on_publisher_saved, sender=Publisher, dispatch_uid="publishing.on_publisher_saved")

        register(SingletonSection("publishing", PublishingSettings))
        register(ListSection("publishers", Publisher, key=("name",), ordering=("name",)))
