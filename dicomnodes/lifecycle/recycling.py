"""Recycling: keep the archive under its maximum size and patient count.

`ArchiveSettings.max_storage_mb` / `max_patients` (0: no maximum).  When one
is exceeded, the studies received longest ago (by their newest instance) go
until both fit again, except a study that is **held**:

- protected, or its patient protected (`protected` flags, admin actions);
- still being received (`deletion.is_receiving`: an instance within the
  last minutes, or an open association that stored into it);
- on a pending burn job or in a queued or running send (the impacts other
  apps register with `deletion.register_impact`: dicomnodes imports no
  publishing module).

`plan()` says what would go, `recycle()` deletes exactly that, one study at
a time (`deletion.delete_studies`: rows in one transaction, files after the
commit, one audit event per study with the actor "recycling").

When it runs: in runscp after associations that stored something ended
(the `association_closed` signal wakes `Recycler`, a thread that checks at
most every RECYCLE_EVERY seconds, so the sums below run at most that often
however many associations end), and daily with the retention rules
(`rules.run_daily`).  The check is two aggregates: the sum of the instances'
sizes (an index-only scan of Instance) and the count of patients.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from django.db import close_old_connections
from django.db.models import Sum

from dicomnodes.lifecycle import deletion
from dicomnodes.models import ArchiveSettings, Instance, Patient, Study
from dicomnodes.signals import association_closed

logger = logging.getLogger(__name__)

ACTOR = "recycling"
RECYCLE_EVERY = 5.0  # seconds: runscp checks the limits at most this often
# What holds a study: deletion.Summary fields (filled by deletion.summarize
# and the impacts other apps register) and how a hold is named.
HOLDING_IMPACTS = {"pending_burns": "on a pending burn job", "active_transfers": "in a queued or running send"}


@dataclass
class Usage:
    bytes: int
    patients: int


@dataclass
class Plan:
    """What recycling would delete now, oldest first, and what it skipped."""

    usage: Usage
    max_bytes: int
    max_patients: int
    studies: list = field(default_factory=list)  # Study rows (with last_received_at, size)
    held: list = field(default_factory=list)  # (Study, reason) passed over
    fits: bool = True  # under the limits once `studies` are gone

    def is_over(self) -> bool:
        return _over(self.usage, self.max_bytes, self.max_patients)


def _over(usage, max_bytes, max_patients) -> bool:
    return bool(max_bytes and usage.bytes > max_bytes) or bool(max_patients and usage.patients > max_patients)


def usage(*, count_bytes=True, count_patients=True) -> Usage:
    """Bytes stored and patients (each only when asked: 0 otherwise)."""
    size = (Instance.objects.aggregate(n=Sum("file_size"))["n"] or 0) if count_bytes else 0
    return Usage(bytes=size, patients=Patient.objects.count() if count_patients else 0)


def hold_reason(study, *, now=None) -> str:
    """Why recycling and retention rules must leave `study` alone ("" if they need not).
    `study` is a Study with its patient_record."""
    if study.protected:
        return "protected"
    if study.patient_record.protected:
        return "patient protected"
    if deletion.is_receiving(study, now=now):
        return "still being received"
    impacts = deletion.summary(studies=[study.pk])
    for name, reason in HOLDING_IMPACTS.items():
        if getattr(impacts, name, 0):
            return reason
    return ""


def oldest_first(studies=None):
    """Studies (not protected, nor their patients) by their newest instance,
    oldest first, each with `last_received_at` and `size` (bytes)."""
    studies = Study.objects.all() if studies is None else studies
    return (
        deletion.last_received(studies.filter(protected=False, patient_record__protected=False))
        .annotate(size=Sum("series__instances__file_size"))
        .select_related("patient_record")
        .order_by("last_received_at", "pk")
    )


def plan(row=None, *, now=None) -> Plan:
    """What recycling would delete now (nothing while under the limits).

    1. the usage now: bytes stored and patients;
    2. the unprotected studies, oldest first: each one not held is taken,
       its bytes off the total, its patient off the count once none of the
       patient's studies is left, until both limits are met.
    """
    row = row or ArchiveSettings.load()
    max_bytes, max_patients = row.max_storage_mb * 2**20, row.max_patients
    result = Plan(usage(count_bytes=bool(max_bytes), count_patients=bool(max_patients)), max_bytes, max_patients)
    if not result.is_over():
        return result
    left = Usage(result.usage.bytes, result.usage.patients)
    studies_left = {}  # patient pk -> studies of it not yet planned
    for study in oldest_first().iterator(chunk_size=200):
        reason = hold_reason(study, now=now)
        if reason:
            result.held.append((study, reason))
            continue
        result.studies.append(study)
        left.bytes -= study.size or 0
        patient = study.patient_record
        studies_left.setdefault(patient.pk, patient.num_studies)
        studies_left[patient.pk] -= 1
        if studies_left[patient.pk] <= 0:
            left.patients -= 1
        if not _over(left, max_bytes, max_patients):
            return result
    result.fits = False
    return result


def recycle(row=None, *, now=None) -> list:
    """Delete what `plan()` says; returns the deletions (deletion.Deleted)."""
    todo = plan(row, now=now)
    if not todo.studies:
        if todo.is_over():
            logger.warning("recycling: over the limits, but every study is held (%d)", len(todo.held))
        return []
    done = []
    for study in todo.studies:
        if not Study.objects.filter(pk=study.pk).exists():
            continue  # deleted meanwhile (another runscp process, the daily task, an administrator)
        done.append(
            deletion.delete_studies(
                [study.pk],
                actor=ACTOR,
                actor_kind="system",
                reason=_reason(todo),
            )
        )
    if not todo.fits:
        logger.warning("recycling: still over the limits; %d studies are held", len(todo.held))
    logger.info("recycling: %d studies deleted", len(done))
    return done


def _reason(todo: Plan) -> str:
    parts = []
    if todo.max_bytes and todo.usage.bytes > todo.max_bytes:
        parts.append(f"{todo.usage.bytes / 2**20:.0f} MB stored, the maximum is {todo.max_bytes // 2**20} MB")
    if todo.max_patients and todo.usage.patients > todo.max_patients:
        parts.append(f"{todo.usage.patients} patients, the maximum is {todo.max_patients}")
    return "recycling: " + "; ".join(parts)


class Recycler:
    """The thread of a runscp process that recycles after stores: woken by
    `association_closed`, it runs `recycle()` at most every `every` seconds
    (a wake-up within that waits for the next turn, so none is lost)."""

    def __init__(self, *, every=RECYCLE_EVERY):
        self.every = every
        self._wake = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    def wake(self):
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="recycler", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self):
        while True:
            self._wake.wait()
            self._wake.clear()
            close_old_connections()
            try:
                recycle()
            except Exception:
                logger.exception("recycling failed; next try after the next stores")
            finally:
                close_old_connections()
            time.sleep(self.every)  # at most every `every` s; a wake-up meanwhile is kept for the next turn


_recycler = Recycler()


def on_association_closed(sender, association=None, **kwargs):
    """Receiver of `association_closed` (runscp's index writer, after the
    commit): an association that stored something wakes the recycler."""
    if association is not None and getattr(association, "instances_received", 0):
        _recycler.wake()


association_closed.connect(on_association_closed, dispatch_uid="lifecycle.recycling")
