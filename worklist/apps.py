from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"

    def ready(self):
        from dicomnodes.config_io import ListSection, SingletonSection, register
        from worklist.models import HL7Destination, WorklistSettings

        register(SingletonSection("worklist", WorklistSettings))
        register(ListSection("hl7_destinations", HL7Destination, key=("host", "port"), ordering=("name",)))
