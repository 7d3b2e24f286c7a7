"""API: corrections of patient and study attributes, and merge; the work is
`dicomnodes.lifecycle.corrections`'s.

- `POST /api/studies/{id}/correct/`: the study's StudyDescription,
  AccessionNumber, ReferringPhysicianName (`dicomnodes.change_study`);
- `POST /api/studies/{id}/correct-patient/`: the name, ID, birth date, sex
  of the study's patient, in all their studies (`dicomnodes.change_patient`);
- `POST /api/patients/merge/`: every study of one patient moves under
  another (`dicomnodes.change_patient`).

A value that is not valid DICOM is a 400 with the messages per field.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import action
from rest_framework.permissions import BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from dicomnodes.lifecycle.corrections import (
    PATIENT_FIELDS,
    STUDY_FIELDS,
    CorrectionError,
    correct_patient,
    correct_study,
    merge_patients,
)
from dicomnodes.models import Patient
from pacs_site.audit import client_address
from portal.api.permissions import IsStaff


class _MayChange(BasePermission):
    """Staff with `permission`, whatever the view's model (the study
    viewset's corrections of a patient need change_patient)."""

    permission = ""
    message = "Staff with the change permission only."

    def has_permission(self, request, view):
        return IsStaff().has_permission(request, view) and request.user.has_perm(self.permission)


class MayChangeStudy(_MayChange):
    permission = "dicomnodes.change_study"


class MayChangePatient(_MayChange):
    permission = "dicomnodes.change_patient"


def _fields_serializer(name, fields):
    return inline_serializer(name, {field: serializers.CharField(required=False, allow_blank=True) for field in fields})


_OUTCOME = inline_serializer(
    "CorrectionOutcome",
    {
        "changes": serializers.DictField(child=serializers.ListField(child=serializers.CharField())),
        "files": serializers.IntegerField(help_text="stored files rewritten"),
        "missing": serializers.IntegerField(help_text="index rows whose file was missing"),
        "studies": serializers.ListField(child=serializers.CharField(), help_text="Study Instance UIDs"),
        "patient_id": serializers.CharField(),
    },
)
_REFUSED = OpenApiResponse(description="A value is not valid DICOM (messages per field), or nothing to change.")


def _answer(run, request):
    """Call `run(data, actor=..., address=...)`; its outcome or the 400."""
    if not isinstance(request.data, dict):
        return Response({"detail": "Send a JSON object."}, status=status.HTTP_400_BAD_REQUEST)
    try:
        outcome = run(dict(request.data), actor=request.user.get_username(), address=client_address(request))
    except CorrectionError as exc:
        body = dict(exc.errors) if exc.errors else {"detail": str(exc)}
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    patient = outcome.patient or (outcome.study.patient_record if outcome.study else None)
    return Response(
        {
            "changes": outcome.changes,
            "files": outcome.files,
            "missing": outcome.missing,
            "studies": outcome.studies,
            "patient_id": patient.patient_id if patient else "",
        }
    )


class CorrectionMixin:
    """Mixed into the study viewset (portal/api/views.py)."""

    @extend_schema(
        request=_fields_serializer("StudyCorrection", STUDY_FIELDS), responses={200: _OUTCOME, 400: _REFUSED}
    )
    @action(detail=True, methods=["post"], permission_classes=[MayChangeStudy])
    def correct(self, request, pk=None):
        """Correct the study's description, accession number or referring
        physician: its stored files are rewritten, then the index."""
        study = self.get_object()
        return _answer(lambda data, **who: correct_study(study, data, **who), request)

    @extend_schema(
        request=_fields_serializer("PatientCorrection", PATIENT_FIELDS), responses={200: _OUTCOME, 400: _REFUSED}
    )
    @action(detail=True, methods=["post"], url_path="correct-patient", permission_classes=[MayChangePatient])
    def correct_patient(self, request, pk=None):
        """Correct the name, ID, birth date or sex of the study's patient, in
        every study of theirs; an ID another patient has is refused (merge)."""
        patient = self.get_object().patient_record
        return _answer(lambda data, **who: correct_patient(patient, data, **who), request)


class PatientMergeView(APIView):
    """POST /api/patients/merge/: every study of the "from" patient moves
    under the "into" patient (files rewritten with the latter's ID, issuer,
    name, birth date and sex); the "from" patient disappears."""

    permission_classes = [MayChangePatient]

    @extend_schema(
        request=inline_serializer(
            "PatientMerge",
            {
                "from_patient_id": serializers.CharField(),
                "from_issuer_of_patient_id": serializers.CharField(required=False, allow_blank=True),
                "into_patient_id": serializers.CharField(),
                "into_issuer_of_patient_id": serializers.CharField(required=False, allow_blank=True),
            },
        ),
        responses={200: _OUTCOME, 400: _REFUSED},
    )
    def post(self, request):
        def run(data, **who):
            found, errors = {}, {}
            for side in ("from", "into"):
                patient_id = data.get(f"{side}_patient_id")
                issuer = data.get(f"{side}_issuer_of_patient_id") or ""
                found[side] = (
                    Patient.objects.filter(patient_id=patient_id, issuer_of_patient_id=issuer).first()
                    if isinstance(patient_id, str) and isinstance(issuer, str)
                    else None
                )
                if found[side] is None:
                    errors[f"{side}_patient_id"] = ["No patient with this ID (and issuer)."]
            if errors:
                raise CorrectionError("Unknown patient.", errors=errors)
            return merge_patients(found["from"], found["into"], **who)

        return _answer(run, request)
