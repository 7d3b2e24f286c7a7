"""What runscp says when incoming associations end.

1. One "study received" event per study that got instances in the
   association (the web UI shows it, and opens the study when the setting
   "open transferred studies when received" is on);
2. the `association_closed` signal, for publishing (disc burning).
"""

import logging

from dicomnodes.models import AssociationLog, DicomServerSettings, Study
from dicomnodes.signals import association_closed
from pacs_site import events
from pacs_site.models import EventKind

logger = logging.getLogger(__name__)


def associations_closed(ids):
    rows = list(AssociationLog.objects.filter(pk__in=ids, instances_received__gt=0))
    if rows:
        open_study = DicomServerSettings.load().open_transferred_studies
    for row in rows:
        studies = Study.objects.filter(series__instances__association=row).distinct()
        for study in studies:
            study_received(study, source=row.calling_ae, kind=EventKind.STUDY_RECEIVED, open_study=open_study)
    for row in AssociationLog.objects.filter(pk__in=ids):
        for receiver, result in association_closed.send_robust(sender=AssociationLog, association=row):
            if isinstance(result, Exception):
                logger.error("association_closed receiver %s failed: %s", receiver, result, exc_info=result)


def study_received(study, *, source, kind, open_study):
    verb = "retrieved from" if kind == EventKind.STUDY_RETRIEVED else "received from"
    events.record(
        kind,
        f"Study {study.study_date or '(no date)'} {study.modalities_in_study or ''} {verb} {source}".replace("  ", " "),
        study_instance_uid=study.study_instance_uid,
        open_study=open_study,
        study_id=study.pk,
        source=source,
        instances=study.num_instances,
    )
