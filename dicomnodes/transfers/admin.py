"""Admin for outgoing transfers: the job list (progress, queue position,
cancel, resubmit), the Query/Retrieve page (C-FIND at a peer, series
drill-down, Retrieve) and the "Send to…" action of studies and series.

Creating jobs needs the "add transfer job" permission; cancelling and
resubmitting need "change transfer job".
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from dicomnodes.models import Peer, TransferJob, TransferLevel, TransferState
from dicomnodes.transfers.jobs import TransferError, cancel_job, resubmit_job, submit_job
from dicomnodes.transfers.scu import ScuError, find_series, find_studies

ADD_PERMISSION = "dicomnodes.add_transferjob"


@admin.register(TransferJob)
class TransferJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "kind",
        "peer",
        "description",
        "state_text",
        "progress_bar",
        "rate_text",
        "queue_position_text",
        "attempts",
        "last_error",
        "created_at",
    ]
    list_display_links = ["id", "description"]
    list_filter = ["state", "kind", "peer"]
    search_fields = ["description", "uids", "last_error"]
    actions = ["cancel_selected", "resubmit_selected"]
    list_per_page = 50
    readonly_fields = [f.name for f in TransferJob._meta.fields]
    change_list_template = "admin/dicomnodes/transferjob/change_list.html"

    def has_add_permission(self, request):
        return False  # jobs come from the Query/Retrieve page and "Send to…"

    def has_change_permission(self, request, obj=None):
        return False  # a job is not edited: the detail page is read-only

    def has_delete_permission(self, request, obj=None):
        return False  # the history stays; cancel stops a job

    def has_cancel_permission(self, request):
        # "change transfer job" is what cancel and resubmit need.
        return request.user.has_perm("dicomnodes.change_transferjob")

    @admin.display(description="state", ordering="state")
    def state_text(self, obj):
        text = obj.get_state_display()
        if obj.state == TransferState.QUEUED and obj.attempts:
            text += f" (retry at {obj.next_attempt_at:%H:%M:%S})"
        if obj.state == TransferState.RUNNING and obj.cancel_requested:
            text += " (cancelling)"
        return text

    @admin.display(description="progress")
    def progress_bar(self, obj):
        if not obj.total:
            return obj.progress_text() or "-"
        percent = min(100, round(100 * (obj.done + obj.failed) / obj.total))
        return format_html(
            '<progress max="100" value="{}" title="{}%"></progress> {}', percent, percent, obj.progress_text()
        )

    @admin.display(description="rate")
    def rate_text(self, obj):
        if not obj.rate:
            return "-"
        return f"{obj.rate:.1f} inst/s, {obj.bytes / 1e6:.1f} MB"

    @admin.display(description="queue position")
    def queue_position_text(self, obj):
        return obj.queue_position() or "-"

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_selected(self, request, queryset):
        done = sum(cancel_job(job) for job in queryset)
        self.message_user(request, f"{done} of {queryset.count()} jobs cancelled (running ones stop within a second).")

    @admin.action(description="Resubmit selected jobs", permissions=["cancel"])
    def resubmit_selected(self, request, queryset):
        done = sum(resubmit_job(job) for job in queryset)
        self.message_user(
            request,
            f"{done} of {queryset.count()} jobs queued again (only failed, partly failed and cancelled ones can be).",
        )

    def get_urls(self):
        view = self.admin_site.admin_view(self.query_view)
        return [path("query/", view, name="dicomnodes_transferjob_query"), *super().get_urls()]

    # --- the Query/Retrieve page -------------------------------------------------------

    def query_view(self, request):
        """GET: the search form, study results and (with `study=`) that
        study's series; POST: retrieve the ticked studies and series."""
        if not request.user.has_perm(ADD_PERMISSION):
            raise PermissionDenied
        if request.method == "POST":
            return self._retrieve(request)
        form = QueryForm(request.GET or None)
        studies, series, error = [], [], ""
        if form.is_bound and form.is_valid():
            peer = form.cleaned_data["peer"]
            try:
                studies = find_studies(
                    peer,
                    patient_name=form.cleaned_data["patient_name"],
                    patient_id=form.cleaned_data["patient_id"],
                    accession=form.cleaned_data["accession"],
                    date=form.date_range(),
                    modality=form.cleaned_data["modality"],
                )
                drill = request.GET.get("study", "")
                if drill:
                    series = find_series(peer, drill)
            except ScuError as exc:
                error = f"{peer}: {exc}"
        context = dict(
            self.admin_site.each_context(request),
            title="Query/Retrieve",
            opts=self.opts,
            form=form,
            studies=[_study_row(a) for a in studies],
            series=[_series_row(a) for a in series],
            drill=request.GET.get("study", ""),
            error=error,
            query=request.GET.urlencode(),
        )
        return TemplateResponse(request, "admin/dicomnodes/transferjob/query.html", context)

    def _retrieve(self, request):
        peer = Peer.objects.filter(pk=request.POST.get("peer")).first()
        kind = "get" if request.POST.get("method") == "get" else "move"
        studies = request.POST.getlist("study")
        series = [value.split("|", 1) for value in request.POST.getlist("series") if "|" in value]
        if peer is None or not (studies or series):
            messages.error(request, "Choose a peer and tick at least one study or series.")
            return redirect(reverse("admin:dicomnodes_transferjob_query") + "?" + request.POST.get("query", ""))
        jobs, errors = [], []
        with transaction.atomic():
            for uid in studies:
                jobs += _submit(errors, kind=kind, peer=peer, uids=[uid], requested_by=request.user)
            by_study = {}
            for study_uid, series_uid in series:
                if study_uid not in studies:
                    by_study.setdefault(study_uid, []).append(series_uid)
            for study_uid, uids in by_study.items():
                jobs += _submit(
                    errors,
                    kind=kind,
                    peer=peer,
                    level=TransferLevel.SERIES,
                    uids=uids,
                    study_uid=study_uid,
                    requested_by=request.user,
                )
        for error in errors:
            messages.error(request, error)
        if jobs:
            messages.success(request, f"{len(jobs)} retrieve jobs queued from {peer}.")
        return redirect("admin:dicomnodes_transferjob_changelist")


def _submit(errors, **job):
    try:
        return [submit_job(**job)]
    except TransferError as exc:
        errors.append(str(exc))
        return []


class QueryForm(forms.Form):
    peer = forms.ModelChoiceField(Peer.objects.order_by("name"))
    patient_name = forms.CharField(required=False, max_length=64, help_text="Wildcards * and ? allowed.")
    patient_id = forms.CharField(required=False, max_length=64, label="Patient ID")
    accession = forms.CharField(required=False, max_length=16, label="Accession number")
    date_from = forms.DateField(required=False, label="Study date from", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="to", widget=forms.DateInput(attrs={"type": "date"}))
    modality = forms.CharField(required=False, max_length=16)

    def clean(self):
        data = super().clean()
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("The date range ends before it starts.")
        return data

    def date_range(self):
        start, end = self.cleaned_data.get("date_from"), self.cleaned_data.get("date_to")
        if not start and not end:
            return ""
        fmt = "%Y%m%d"
        return f"{start.strftime(fmt) if start else ''}-{end.strftime(fmt) if end else ''}"


def _text(answer, keyword):
    value = answer.get(keyword, "")
    return "" if value is None else str(value)


def _study_row(a):
    return {k: _text(a, k) for k in a.dir() if k != "QueryRetrieveLevel"} | {
        "uid": _text(a, "StudyInstanceUID"),
    }


def _series_row(a):
    return {k: _text(a, k) for k in a.dir()} | {"uid": _text(a, "SeriesInstanceUID")}


# --- "Send to…" on studies and series ------------------------------------------------------


class SendToForm(forms.Form):
    peer = forms.ModelChoiceField(Peer.objects.order_by("name"), help_text="The node that gets the images.")


def send_to_action(level):
    """The "Send to…" admin action for studies (STUDY) or series (SERIES)."""

    def send_to(modeladmin, request, queryset):
        if not request.user.has_perm(ADD_PERMISSION):
            raise PermissionDenied
        uid_field = "study_instance_uid" if level == TransferLevel.STUDY else "series_instance_uid"
        form = SendToForm(request.POST if "apply" in request.POST else None)
        if form.is_bound and form.is_valid():
            peer = form.cleaned_data["peer"]
            uids = list(queryset.values_list(uid_field, flat=True))
            errors = []
            with transaction.atomic():
                if level == TransferLevel.STUDY:  # one job per study: each shows its own progress
                    jobs = [j for uid in uids for j in _submit(errors, kind="send", peer=peer, uids=[uid])]
                else:
                    jobs = _submit(errors, kind="send", peer=peer, level=level, uids=uids)
                for job in jobs:
                    TransferJob.objects.filter(pk=job.pk).update(requested_by=request.user)
            for error in errors:
                modeladmin.message_user(request, error, messages.ERROR)
            if jobs:
                url = reverse("admin:dicomnodes_transferjob_changelist")
                modeladmin.message_user(
                    request,
                    format_html('{} send jobs to {} queued: see <a href="{}">transfer jobs</a>.', len(jobs), peer, url),
                )
            return None
        context = dict(
            modeladmin.admin_site.each_context(request),
            title=f"Send {queryset.count()} {'studies' if level == TransferLevel.STUDY else 'series'} to…",
            opts=modeladmin.opts,
            form=form,
            objects=queryset,
            action="send_to",
            selected=request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
        )
        return TemplateResponse(request, "admin/dicomnodes/send_to.html", context)

    send_to.short_description = "Send to…"
    send_to.__name__ = "send_to"
    return send_to
