from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"

    def ready(self):
        from dicomnodes.query.registry import register_find_responder
        from dicomnodes.signals import studies_created
        from pacs_site.config_io import ListSection, SingletonSection, register
        from worklist import mwl
        from worklist.models import HL7Destination, WorklistSettings
        from worklist.outgoing import on_studies_created

        # New studies complete their worklist items (and the RIS is told).
        studies_created.connect(on_studies_created, dispatch_uid="worklist.on_studies_created")
        # runscp answers Modality Worklist C-FIND from our items.
        register_find_responder("WORKLIST", mwl.answer_find)
        register(SingletonSection("worklist", WorklistSettings))
        register(ListSection("hl7_destinations", HL7Destination, key=("host", "port"), ordering=("name",)))
