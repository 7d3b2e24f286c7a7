"""Admin: correct a patient's or a study's attributes, merge patients."""


class CorrectionAdminMixin:
    """Mixed into the Patient and Study ModelAdmins (dicomnodes/admin.py)."""
