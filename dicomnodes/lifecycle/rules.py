"""Retention rules: "delete the studies whose newest instance was received
more than N days ago", optionally only those with one modality, or only
those sent by one calling AE (`RetentionRule`, edited in the admin).

`preview(rule)` lists the studies `apply(rule)` deletes, and `apply` deletes
exactly what `preview` lists at that moment (it calls it), one study at a
time with the actor "rule: <name>" in its audit event.  Held studies are
left out of both and listed apart: protected (the study or its patient),
still being received, on a pending burn job, in a queued or running send
(`recycling.hold_reason`).

- modality: the study has a series of that modality (ModalitiesInStudy);
- calling AE: every instance of the study came from that AE title (a study
  that another sender added to is not the rule's to delete).

`run_daily` is registered as a daily pruner (pacs_site/retention.py, the
django-q2 schedule that already runs): every enabled rule, then recycling.
"""

import logging
from dataclasses import dataclass, field

from django.db.models import Q
from django.utils import timezone

from dicomnodes.lifecycle import deletion, recycling
from dicomnodes.models import Instance, RetentionRule
from pacs_site.retention import register_pruner

logger = logging.getLogger(__name__)


@dataclass
class Preview:
    studies: list = field(default_factory=list)  # Study rows, oldest first (last_received_at, size)
    held: list = field(default_factory=list)  # (Study, reason)

    @property
    def bytes(self):
        return sum(study.size or 0 for study in self.studies)


def actor(rule) -> str:
    return f"rule: {rule.name}"[:150]


def matching(rule, *, now=None):
    """The rule's studies, held or not (protected ones excepted), oldest first."""
    studies = deletion.studies_older_than(rule.older_than_days, now=now)
    if rule.modality:
        studies = studies.filter(_has_modality(rule.modality.strip().upper()))
    if rule.calling_ae:
        ae = rule.calling_ae.strip()
        studies = studies.filter(pk__in=Instance.objects.filter(calling_ae=ae).values("series__study_id")).exclude(
            pk__in=Instance.objects.exclude(calling_ae=ae).values("series__study_id")
        )
    return recycling.oldest_first(studies)


def _has_modality(modality):
    """ModalitiesInStudy (backslash-joined) holds `modality` as one of its values."""
    return (
        Q(modalities_in_study=modality)
        | Q(modalities_in_study__startswith=modality + "\\")
        | Q(modalities_in_study__endswith="\\" + modality)
        | Q(modalities_in_study__contains="\\" + modality + "\\")
    )


def preview(rule, *, now=None) -> Preview:
    """What `apply(rule)` would delete now, and what it would leave (held)."""
    result = Preview()
    for study in matching(rule, now=now).iterator(chunk_size=200):
        reason = recycling.hold_reason(study, now=now)
        if reason:
            result.held.append((study, reason))
        else:
            result.studies.append(study)
    return result


def apply(rule, *, now=None) -> list:
    """Delete what `preview(rule)` lists; returns the deletions (deletion.Deleted)."""
    todo = preview(rule, now=now)
    done = []
    for study in todo.studies:
        done.append(
            deletion.delete_studies(
                [study.pk],
                actor=actor(rule),
                actor_kind="system",
                reason=f"retention rule {rule.name}: received more than {rule.older_than_days} days ago",
            )
        )
    RetentionRule.objects.filter(pk=rule.pk).update(last_run_at=timezone.now(), last_deleted=len(done))
    if done:
        logger.info("retention rule %s: %d studies deleted", rule.name, len(done))
    return done


def run_daily(_settings=None) -> str:
    """Every enabled rule, then recycling (the daily pruner)."""
    parts = []
    for rule in RetentionRule.objects.filter(enabled=True):
        try:
            parts.append(f"{rule.name}: {len(apply(rule))} studies deleted")
        except Exception:
            logger.exception("retention rule %s failed", rule.name)
            parts.append(f"{rule.name}: failed")
    parts.append(f"recycling: {len(recycling.recycle())} studies deleted")
    return "; ".join(parts)


register_pruner("retention rules and recycling", run_daily)
