from django.apps import AppConfig


class PublishingConfig(AppConfig):
    name = "publishing"
    verbose_name = "Publishing (CD/DVD)"

    def ready(self):
        from dicomnodes.signals import association_closed
        from publishing.triggers import on_association_closed

        association_closed.connect(on_association_closed, dispatch_uid="publishing.on_association_closed")

        from django.db.models.signals import post_save

        from publishing.models import Publisher as PublisherModel
        from publishing.tasks import on_publisher_saved

        post_save.connect(on_publisher_saved, sender=PublisherModel, dispatch_uid="publishing.on_publisher_saved")

        from dicomnodes.config_io import ListSection, SingletonSection, register
        from publishing.models import Publisher, PublishingSettings

        register(SingletonSection("publishing", PublishingSettings))
        register(ListSection("publishers", Publisher, key=("name",), ordering=("name",)))
