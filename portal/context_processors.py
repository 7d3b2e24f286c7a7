"""Institution and department for the header of every page (portal and admin)."""

from django.db import DatabaseError

from portal.models import HttpSettings


def http_settings(request):
    try:
        row = HttpSettings.load()
    except DatabaseError:  # before `migrate`: pages still render
        return {}
    return {"portal_institution": row.institution, "portal_department": row.department}
