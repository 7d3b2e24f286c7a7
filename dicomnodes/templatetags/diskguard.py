"""`{% disk_warning %}`: the disk guard's warning for admin pages (the admin's
base_site.html shows it above the messages), "" while there is room."""

import logging

from django import template
from django.db import DatabaseError

from dicomnodes.lifecycle import diskguard

logger = logging.getLogger(__name__)
register = template.Library()


@register.simple_tag(takes_context=True)
def disk_warning(context):
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_staff:
        return ""
    try:
        return diskguard.measure().warning()
    except (OSError, DatabaseError) as exc:  # the page itself must still render
        logger.warning("disk guard: cannot measure the storage volume for the admin (%s)", exc)
        return ""
