"""Query-string filters of the list endpoints: one django-filter FilterSet per
view (`DjangoFilterBackend`, the default backend in REST_FRAMEWORK settings).

Names match case-insensitively with DICOM wildcards (`*`, `?`) on the
upper-cased column, as C-FIND does; dates are YYYYMMDD or YYYY-MM-DD.  The
matching itself is C-FIND's (`dicomnodes.query.rules`).  A value that cannot
be a filter value is answered with 400 naming the parameter, never ignored
(the backend's `raise_exception`).  drf-spectacular documents every filter,
with its `help_text` as the description.
"""

import datetime

import django_filters as df
from django import forms
from django.core.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination

from dicomnodes.models import Instance, Series, Study, TransferJob
from dicomnodes.query import rules  # also registers the dicom_wildcard lookup
from portal.models import StudyToken
from publishing.models import BurnJob
from worklist.models import WorklistItem

# --- Values ------------------------------------------------------------------------


class WholeNumberField(forms.IntegerField):
    """`int()` of the text: unlike IntegerField, "1.0" is not a whole number."""

    default_error_messages = {"invalid": "A whole number."}

    def to_python(self, value):
        if value in self.empty_values:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None


class DateTextField(forms.CharField):
    """A date as the index keeps it (YYYYMMDD), given as YYYYMMDD or YYYY-MM-DD."""

    def to_python(self, value):
        value = super().to_python(value)
        if value in self.empty_values:
            return value
        for fmt in ("%Y%m%d", "%Y-%m-%d"):
            try:
                return datetime.datetime.strptime(value, fmt).strftime("%Y%m%d")
            except ValueError:
                pass
        raise ValidationError("A date: YYYYMMDD or YYYY-MM-DD.", code="invalid")


# --- Filters -----------------------------------------------------------------------


class WholeNumberFilter(df.NumberFilter):
    field_class = WholeNumberField


class NameFilter(df.CharFilter):
    """A person name on its upper-cased column: `*` and `?` are wildcards
    (PS3.4 C.2.2.2.4), else the whole name (C.2.2.2.1); case does not matter."""

    def filter(self, qs, value):
        if not value:
            return qs
        value = value.upper()
        rule = rules.wildcard_match if rules.has_wildcard(value) else rules.single_value_match
        return qs.filter(rule(self.field_name, value))


class MultiValueFilter(df.CharFilter):
    """One value of a backslash-joined list (Modalities in Study "CT\\SR")."""

    def filter(self, qs, value):
        if not value:
            return qs
        return qs.filter(rules.multi_value_match(self.field_name, value.upper()))


class DateFilter(df.CharFilter):
    """A date bound, `lookup_expr` "gte" (on or after) or "lte" (on or
    before): a range open at the other end (PS3.4 C.2.2.2.5), so a stored
    empty date never matches, though it sorts before every date."""

    field_class = DateTextField

    def filter(self, qs, value):
        if not value:
            return qs
        bounds = f"{value}-" if self.lookup_expr == "gte" else f"-{value}"
        return qs.filter(rules.date_range_match(self.field_name, bounds))


PATIENT_ID = "Patient ID, exactly."
PATIENT_NAME = "Patient name; * and ? are wildcards; any case."
ACCESSION_NUMBER = "Accession number, exactly."
STUDY_UID = "The study's Study Instance UID."


# --- One FilterSet per list view ---------------------------------------------------


class StudyFilter(df.FilterSet):
    patient_id = df.CharFilter("patient_id", help_text=PATIENT_ID)
    patient_name = NameFilter("patient_name_upper", help_text=PATIENT_NAME)
    date_from = DateFilter("study_date", "gte", help_text="Study date on or after (YYYYMMDD or YYYY-MM-DD).")
    date_to = DateFilter("study_date", "lte", help_text="Study date on or before (YYYYMMDD or YYYY-MM-DD).")
    modality = MultiValueFilter("modalities_in_study", help_text="A modality in the study (CT, MR, ...).")
    accession_number = df.CharFilter("accession_number", help_text=ACCESSION_NUMBER)
    study_instance_uid = df.CharFilter("study_instance_uid", help_text="Study Instance UID.")

    class Meta:
        model = Study
        fields = []


class SeriesFilter(df.FilterSet):
    study = WholeNumberFilter("study", help_text="The study's id (from /api/studies/).")
    study_instance_uid = df.CharFilter("study__study_instance_uid", help_text=STUDY_UID)
    series_instance_uid = df.CharFilter("series_instance_uid", help_text="Series Instance UID.")
    modality = df.CharFilter("modality", help_text="Modality (CT, MR, ...).")

    class Meta:
        model = Series
        fields = []


class InstanceFilter(df.FilterSet):
    series = WholeNumberFilter("series", help_text="The series' id (from /api/series/).")
    series_instance_uid = df.CharFilter("series__series_instance_uid", help_text="The series' Series Instance UID.")
    sop_instance_uid = df.CharFilter("sop_instance_uid", help_text="SOP Instance UID.")

    class Meta:
        model = Instance
        fields = []


class TransferJobFilter(df.FilterSet):
    state = df.CharFilter("state", help_text="queued, running, succeeded, partly_failed, failed or cancelled.")
    kind = df.CharFilter("kind", help_text="send, move or get.")
    peer = WholeNumberFilter("peer", help_text="The peer's id.")

    class Meta:
        model = TransferJob
        fields = []


class WorklistItemFilter(df.FilterSet):
    status = df.CharFilter("status", help_text="SCHEDULED, IN PROGRESS, COMPLETED, CANCELLED or DISCONTINUED.")
    patient_id = df.CharFilter("patient_id", help_text=PATIENT_ID)
    patient_name = NameFilter("patient_name_upper", help_text=PATIENT_NAME)
    accession_number = df.CharFilter("accession_number", help_text=ACCESSION_NUMBER)
    modality = df.CharFilter("modality", help_text="Modality (CT, MR, ...).")
    station = df.CharFilter("scheduled_station_ae_title", help_text="Scheduled station AE title.")
    date_from = DateFilter("scheduled_start_date", "gte", help_text="Scheduled on or after (YYYYMMDD or YYYY-MM-DD).")
    date_to = DateFilter("scheduled_start_date", "lte", help_text="Scheduled on or before (YYYYMMDD or YYYY-MM-DD).")

    class Meta:
        model = WorklistItem
        fields = []


class BurnJobFilter(df.FilterSet):
    state = df.CharFilter("state", help_text="collecting, due, staging, submitted, burning, done, failed, ...")
    study = WholeNumberFilter("studies", help_text="Jobs holding this study (its id).")

    class Meta:
        model = BurnJob
        fields = []


class StudyTokenFilter(df.FilterSet):
    study = WholeNumberFilter("study", help_text="The study's id.")
    study_instance_uid = df.CharFilter("study__study_instance_uid", help_text=STUDY_UID)

    class Meta:
        model = StudyToken
        fields = []


class Pagination(PageNumberPagination):
    """`?page=N`, 50 a page unless `?page_size=` (at most 500) says otherwise."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
