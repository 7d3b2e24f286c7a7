"""API: DELETE on the archive's resources (with their files)."""


class DeletionMixin:
    """Mixed into the archive's viewsets (portal/api/views.py)."""
