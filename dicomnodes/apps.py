from django.apps import AppConfig


class DicomnodesConfig(AppConfig):
    name = "dicomnodes"
    verbose_name = "DICOM node"
