"""Admin: correct a patient's or a study's attributes, merge patients
(the work is dicomnodes/lifecycle/corrections.py's).

- "Correct…" (a link on the patient's and the study's page): a form with the
  current values, then a confirmation showing old -> new and how many files
  get rewritten, then the correction;
- "Merge into another patient…" (an action of the patient list, and a link
  on the patient's page): the other patient's ID, then a confirmation
  showing both patients, then the merge.

The archive admins are read-only (ReadOnlyAdmin says no change permission),
so these views check the model's change permission themselves.
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from dicomnodes.lifecycle.corrections import (
    PATIENT_FIELDS,
    STUDY_FIELDS,
    CorrectionError,
    correct_patient,
    correct_study,
    files_of_patient,
    files_of_study,
    merge_patients,
    planned_changes,
)
from dicomnodes.models import Patient
from pacs_site.audit import client_address

_LABELS = {
    "patient_name": "Patient's name (PN: Family^Given^Middle^Prefix^Suffix)",
    "patient_id": "Patient ID",
    "patient_birth_date": "Birth date (YYYYMMDD)",
    "patient_sex": "Sex (M, F, O or empty)",
    "study_description": "Study description",
    "accession_number": "Accession number",
    "referring_physician_name": "Referring physician (PN)",
}


def _correction_form(fields, data=None, initial=None):
    form = forms.Form(data=data, initial=initial)
    for name in fields:
        form.fields[name] = forms.CharField(label=_LABELS[name], required=False, strip=False)
    return form


class MergeForm(forms.Form):
    patient_id = forms.CharField(label="Into the patient with ID", max_length=64)
    issuer_of_patient_id = forms.CharField(label="Issuer of that ID", max_length=64, required=False)


class CorrectionAdminMixin:
    """Mixed into the Patient and Study ModelAdmins (dicomnodes/admin.py)."""

    def get_urls(self):
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        urls = [
            path("<path:object_id>/correct/", self.admin_site.admin_view(self.correct_view), name=f"{info}_correct")
        ]
        if self.model is Patient:
            urls.append(
                path("<path:object_id>/merge/", self.admin_site.admin_view(self.merge_view), name=f"{info}_merge")
            )
        # Before the admin's own patterns: "<path:object_id>/" would swallow them.
        return [*urls, *super().get_urls()]

    def get_readonly_fields(self, request, obj=None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and self._may_correct(request):
            fields.append("corrections")
        return fields

    def get_actions(self, request):
        actions = super().get_actions(request)
        if self.model is Patient and actions is not None and self._may_correct(request):
            action = CorrectionAdminMixin.merge_into_patient
            actions["merge_into_patient"] = (action, "merge_into_patient", action.short_description)
        return actions

    @admin.display(description="corrections")
    def corrections(self, obj):
        info = f"admin:{self.opts.app_label}_{self.opts.model_name}"
        links = [(reverse(f"{info}_correct", args=[obj.pk]), "Correct…")]
        if self.model is Patient:
            links.append((reverse(f"{info}_merge", args=[obj.pk]), "Merge into another patient…"))
        return format_html_join(" · ", '<a href="{}">{}</a>', links)

    def merge_into_patient(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select the one patient to merge into another.", messages.WARNING)
            return None
        return redirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_merge", args=[queryset.get().pk]))

    merge_into_patient.short_description = "Merge into another patient…"

    # --- the views ---------------------------------------------------------------

    def _may_correct(self, request):
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    def _object_or_denied(self, request, object_id):
        if not self._may_correct(request):
            raise PermissionDenied
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise PermissionDenied  # gone (merged, corrected) or never there: nothing to show
        return obj

    def _page(self, request, obj, template, **context):
        context.update(
            self.admin_site.each_context(request),
            opts=self.opts,
            original=obj,
            title=context.get("title", str(obj)),
            object_url=reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk]),
        )
        return TemplateResponse(request, template, context)

    def correct_view(self, request, object_id):
        """GET: the form; POST: the confirmation (old -> new, files), then with
        `confirm` the correction."""
        obj = self._object_or_denied(request, object_id)
        is_patient = self.model is Patient
        fields = PATIENT_FIELDS if is_patient else STUDY_FIELDS
        current = {name: getattr(obj, name) for name in fields}
        if request.method != "POST":
            form = _correction_form(fields, initial=current)
            return self._page(request, obj, "admin/dicomnodes/correct.html", form=form, title=f"Correct {obj}")
        form = _correction_form(fields, data=request.POST)
        form.is_valid()
        data = {name: form.cleaned_data.get(name, "") for name in fields}
        if "edit" in request.POST:  # back from the confirmation
            return self._page(request, obj, "admin/dicomnodes/correct.html", form=form, title=f"Correct {obj}")
        action = correct_patient if is_patient else correct_study
        if "confirm" in request.POST:
            try:
                outcome = action(obj, data, actor=request.user.get_username(), address=client_address(request))
            except CorrectionError as exc:
                return self._refused(request, obj, form, exc)
            self.message_user(request, f"Corrected: {', '.join(outcome.changes)}; {outcome.files} files rewritten.")
            target = outcome.patient or obj
            return redirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[target.pk]))
        try:
            changes = planned_changes(obj, data)  # the checks of the real run
        except CorrectionError as exc:
            return self._refused(request, obj, form, exc)
        files = files_of_patient(obj) if is_patient else files_of_study(obj)
        return self._page(
            request,
            obj,
            "admin/dicomnodes/correct.html",
            form=form,
            confirm=True,
            changes=[(_LABELS[name], old, new) for name, (old, new) in changes.items()],
            files=files,
            studies=obj.studies.count() if is_patient else 1,
            title=f"Correct {obj}?",
        )

    def _refused(self, request, obj, form, exc):
        for name, errors in exc.errors.items():
            if name in form.fields:
                for error in errors:
                    form.add_error(name, error)
        if not exc.errors:
            form.add_error(None, str(exc))
        return self._page(request, obj, "admin/dicomnodes/correct.html", form=form, title=f"Correct {obj}")

    def merge_view(self, request, object_id):
        """GET: which patient to merge into; POST: the confirmation with both
        patients, then with `confirm` the merge."""
        source = self._object_or_denied(request, object_id)
        form = MergeForm(data=request.POST if request.method == "POST" else None)
        page = dict(form=form, source=source, title=f"Merge {source} into another patient")
        if not form.is_valid():
            return self._page(request, source, "admin/dicomnodes/merge.html", **page)
        target = Patient.objects.filter(
            patient_id=form.cleaned_data["patient_id"].strip(),
            issuer_of_patient_id=form.cleaned_data["issuer_of_patient_id"].strip(),
        ).first()
        if target is None or target.pk == source.pk:
            form.add_error("patient_id", "No other patient has this ID (and issuer).")
            return self._page(request, source, "admin/dicomnodes/merge.html", **page)
        if "confirm" not in request.POST:
            page.update(target=target, confirm=True, files=files_of_patient(source), title="Merge these patients?")
            return self._page(request, source, "admin/dicomnodes/merge.html", **page)
        try:
            outcome = merge_patients(source, target, actor=request.user.get_username(), address=client_address(request))
        except CorrectionError as exc:
            form.add_error(None, str(exc))
            return self._page(request, source, "admin/dicomnodes/merge.html", **page)
        self.message_user(
            request,
            format_html(
                "{} studies of patient {} moved to patient {}; {} files rewritten.",
                len(outcome.studies),
                source.patient_id,
                target.patient_id,
                outcome.files,
            ),
        )
        return redirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[target.pk]))
