from django.apps import AppConfig


class DicomnodesConfig(AppConfig):
    name = "dicomnodes"
    verbose_name = "DICOM node"

    def ready(self):
        # The archive settings and retention rules admin, and the protect
        # actions it adds to dicomnodes.admin's lists (as other apps' admin
        # modules do; imported here, dicomnodes.admin cannot import it back).
        from dicomnodes.lifecycle import admin as lifecycle_admin  # noqa: F401
        from dicomnodes.models import DicomServerSettings, Peer
        from pacs_site.config_io import ListSection, SingletonSection, register

        register(SingletonSection("dicom", DicomServerSettings))
        register(
            ListSection(
                "peers",
                Peer,
                key=("ae_title", "host", "port"),
                renames={
                    "may_store": "can_store",
                    "may_query": "can_query",
                    "may_retrieve": "can_retrieve",
                    "is_move_destination": "move_destination",
                },
                ordering=("name", "ae_title", "host", "port"),
            )
        )
