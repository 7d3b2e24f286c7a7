"""What the index writer says after its commits (its default hooks).

- New studies: the `studies_created` signal (worklist completes its items).
- Associations ended:
  1. one "study received" event per study that got instances in the
     association (the web UI shows it, and opens the study when the setting
     "open transferred studies when received" is on);
  2. the `association_closed` signal, for publishing (disc burning).
"""

import logging

from dicomnodes import signals  # its studies_created, not the hook of that name below
from dicomnodes.models import AssociationLog, DicomServerSettings, Study
from dicomnodes.signals import association_closed, send_logged
from pacs_site import events
from pacs_site.models import EventKind

logger = logging.getLogger(__name__)

_CHUNK = 2000  # UIDs per IN (...) query


def studies_created(studies):
    """`studies`: a signals.NewStudy for each study just created."""
    send_logged(signals.studies_created, None, studies=list(studies))


def associations_closed(closes):
    """`closes`: the index's AssociationClose jobs just committed."""
    uids_of = {close.association_id: list(close.sop_instance_uids) for close in closes}
    rows = list(AssociationLog.objects.filter(pk__in=list(uids_of)))
    open_study = DicomServerSettings.load().open_transferred_studies if rows else False
    for row in rows:
        uids = uids_of.get(row.pk, [])
        for study in studies_of(uids):
            study_received(study, source=row.calling_ae, kind=EventKind.STUDY_RECEIVED, open_study=open_study)
        send_logged(association_closed, AssociationLog, association=row, sop_instance_uids=uids)


def studies_of(sop_instance_uids):
    pks = set()
    for start in range(0, len(sop_instance_uids), _CHUNK):
        chunk = sop_instance_uids[start : start + _CHUNK]
        pks.update(Study.objects.filter(series__instances__sop_instance_uid__in=chunk).values_list("pk", flat=True))
    return list(Study.objects.filter(pk__in=pks).order_by("pk"))


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
