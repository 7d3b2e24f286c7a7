"""Events the web UI shows: studies received or retrieved, and the like.

The listeners (runscp, runmllp, the django-q2 workers) run in other processes
than the web server, so an event is a row: every process can write one, and
the dashboard reads the rows newer than the last one it showed (see
`pacs_site/events.py`).
"""

from django.db import models


class EventKind(models.TextChoices):
    STUDY_RECEIVED = "study.received", "study received"
    STUDY_RETRIEVED = "study.retrieved", "study retrieved"


class Event(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=32, choices=EventKind.choices, db_index=True)
    message = models.CharField(max_length=255)
    study_instance_uid = models.CharField("Study Instance UID", max_length=64, blank=True, db_index=True)
    # The setting "open transferred studies when received" as it was when the
    # event happened: the dashboard opens the study by itself when it is set.
    open_study = models.BooleanField(default=False)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.message}"
