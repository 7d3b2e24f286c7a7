"""API: corrections of patient and study attributes, and merge."""


class CorrectionMixin:
    """Mixed into the patient and study viewsets (portal/api/views.py)."""
