"""Admin: delete patients, studies, series and instances (with their files)."""


class DeletionAdminMixin:
    """Mixed into the archive's ModelAdmins (dicomnodes/admin.py)."""
