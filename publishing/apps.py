from django.apps import AppConfig


class PublishingConfig(AppConfig):
    name = "publishing"
    verbose_name = "Publishing (CD/DVD)"

    def ready(self):
        from dicomnodes.signals import association_closed
        from publishing.triggers import on_association_closed

        association_closed.connect(on_association_closed, dispatch_uid="publishing.on_association_closed")

        from dicomnodes.config_io import ListSection, SingletonSection, register
        from publishing.models import Publisher, PublishingSettings

        register(SingletonSection("publishing", PublishingSettings))
        register(ListSection("publishers", Publisher, key=("name",), ordering=("name",)))
