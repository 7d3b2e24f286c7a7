"""Record an event for the web UI (see `pacs_site.models.Event`).

Recording never fails the work that caused it: a failure is logged.
"""

import logging

logger = logging.getLogger(__name__)


def record(kind, message, *, study_instance_uid="", open_study=False, **data):
    from pacs_site.models import Event

    try:
        return Event.objects.create(
            kind=kind,
            message=message[:255],
            study_instance_uid=study_instance_uid,
            open_study=open_study,
            data=data,
        )
    except Exception:
        logger.exception("could not record the event %r", kind)
        return None
