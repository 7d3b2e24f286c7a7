"""API views: one viewset per resource; work is delegated to the apps' modules
(`dicomnodes.transfers.echo`, `dicomnodes.transfers.jobs`, `portal.tokens`)."""

import json

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from dicomnodes.models import Instance, Peer, Series, Study, TransferJob
from dicomnodes.transfers import jobs as transfers
from dicomnodes.transfers.echo import echo
from pacs_site.audit_web import AuditedReads, api_read
from portal import tokens
from portal.api import filters as f
from portal.api.corrections import CorrectionMixin
from portal.api.deletion import DeletionMixin
from portal.api.permissions import StaffModelPermissions
from portal.api.serializers import (
    BurnJobSerializer,
    EchoResultSerializer,
    InstanceSerializer,
    NewStudyTokenSerializer,
    PeerSerializer,
    SeriesSerializer,
    StudySerializer,
    StudyTokenCreateSerializer,
    StudyTokenSerializer,
    TransferJobCreateSerializer,
    TransferJobSerializer,
    WorklistItemSerializer,
    model_errors,
)
from portal.models import StudyToken
from publishing.models import BurnJob
from worklist.models import WorklistItem


class DicomFileRenderer(BaseRenderer):
    """Lets a client ask for `Accept: application/dicom`; the file itself is a
    FileResponse, so only error details pass through here (as JSON)."""

    media_type = "application/dicom"
    format = "dcm"
    charset = None

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return json.dumps(data).encode() if data is not None else b""


# --- The archive (read-only) -----------------------------------------------------


class StudyViewSet(AuditedReads, CorrectionMixin, DeletionMixin, viewsets.ReadOnlyModelViewSet):
    audit_what = "studies"
    permission_classes = [StaffModelPermissions]
    queryset = Study.objects.order_by("-study_date", "-study_time", "-id")
    serializer_class = StudySerializer
    filterset_class = f.StudyFilter


class SeriesViewSet(AuditedReads, DeletionMixin, viewsets.ReadOnlyModelViewSet):
    audit_what = "series"
    permission_classes = [StaffModelPermissions]
    queryset = Series.objects.select_related("study").order_by("study_id", "series_number", "id")
    serializer_class = SeriesSerializer
    filterset_class = f.SeriesFilter


class InstanceViewSet(AuditedReads, DeletionMixin, viewsets.ReadOnlyModelViewSet):
    audit_what = "instances"
    permission_classes = [StaffModelPermissions]
    queryset = Instance.objects.select_related("series").order_by("series_id", "instance_number", "id")
    serializer_class = InstanceSerializer
    filterset_class = f.InstanceFilter


class InstanceFileView(generics.GenericAPIView):
    """GET /api/instances/<id>/file: the stored DICOM file, byte for byte as
    it was received (application/dicom)."""

    queryset = Instance.objects.all()
    permission_classes = [StaffModelPermissions]  # view_instance
    renderer_classes = [JSONRenderer, DicomFileRenderer]

    @extend_schema(responses={(200, "application/dicom"): OpenApiTypes.BINARY}, operation_id="instances_file")
    def get(self, request, pk):
        instance = self.get_object()
        try:
            # The path comes from the hash of the UID (dicomnodes.archive.storage),
            # never from a value in the request.
            handle = open(instance.path, "rb")  # noqa: SIM115 - FileResponse closes it
        except FileNotFoundError:
            raise NotFound("The file of this instance is missing from the storage.") from None
        api_read(request, "instance file", object_id=instance.pk, study_uid=instance.series.study.study_instance_uid)
        return FileResponse(
            handle, content_type="application/dicom", as_attachment=True, filename=f"{instance.sop_instance_uid}.dcm"
        )


# --- Peers -------------------------------------------------------------------------


class PeerViewSet(viewsets.ModelViewSet):
    """Known DICOM nodes.  Changing them needs the model permissions, echoing
    one needs `change_peer` (as the admin's Echo button)."""

    queryset = Peer.objects.order_by("name", "id")
    serializer_class = PeerSerializer
    permission_classes = [StaffModelPermissions]
    action_permissions = {"echo": ["change"]}

    @extend_schema(request=None, responses=EchoResultSerializer)
    @action(detail=True, methods=["post"])
    def echo(self, request, pk=None):
        """C-ECHO the peer: ok, the round trip in ms, and what happened in words."""
        result = echo(self.get_object())
        return Response(EchoResultSerializer(result).data)


# --- Transfer jobs -------------------------------------------------------------------


class TransferJobViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Outgoing sends and retrieves, with their progress (done/total, rate)."""

    queryset = TransferJob.objects.select_related("peer", "requested_by").order_by("-id")
    serializer_class = TransferJobSerializer
    permission_classes = [StaffModelPermissions]
    action_permissions = {"cancel": ["change"]}
    filterset_class = f.TransferJobFilter

    @extend_schema(request=TransferJobCreateSerializer, responses={201: TransferJobSerializer})
    def create(self, request, *args, **kwargs):
        """Queue a job; the worker runs it (at most "maximum outgoing connections" at once)."""
        form = TransferJobCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        try:
            job = transfers.submit_job(**form.validated_data, requested_by=request.user)
        except transfers.TransferError as exc:
            raise ValidationError({"detail": str(exc)}) from None
        except DjangoValidationError as exc:
            raise model_errors(exc) from None
        return Response(self.get_serializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={200: TransferJobSerializer, 409: OpenApiResponse(description="The job has finished already.")},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a queued job, or ask a running one to stop after the current instance."""
        job = self.get_object()
        if not transfers.cancel_job(job):
            job.refresh_from_db()
            return Response(
                {"detail": f"Job #{job.pk} is {job.get_state_display()}: nothing to cancel."},
                status=status.HTTP_409_CONFLICT,
            )
        job.refresh_from_db()
        return Response(self.get_serializer(job).data)


# --- Worklist ------------------------------------------------------------------------


class WorklistItemViewSet(AuditedReads, viewsets.ModelViewSet):
    """Modality worklist entries (from HL7 orders, or made here)."""

    audit_what = "worklist items"

    queryset = WorklistItem.objects.order_by("scheduled_start_date", "scheduled_start_time", "id")
    serializer_class = WorklistItemSerializer
    permission_classes = [StaffModelPermissions]
    filterset_class = f.WorklistItemFilter


# --- Burn jobs ------------------------------------------------------------------------


class BurnJobViewSet(viewsets.ReadOnlyModelViewSet):
    """Disc publishing jobs and their state (the admin and the robots change them)."""

    permission_classes = [StaffModelPermissions]
    queryset = BurnJob.objects.select_related("publisher").prefetch_related("studies", "discs").order_by("-id")
    serializer_class = BurnJobSerializer
    filterset_class = f.BurnJobFilter


# --- Study tokens --------------------------------------------------------------------


class StudyTokenViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Links for patients and physicians: made here or in the admin, revoked here."""

    queryset = StudyToken.objects.select_related("study", "created_by").order_by("-created_at", "-id")
    serializer_class = StudyTokenSerializer
    permission_classes = [StaffModelPermissions]
    action_permissions = {"revoke": ["change"]}
    filterset_class = f.StudyTokenFilter

    @extend_schema(request=StudyTokenCreateSerializer, responses={201: NewStudyTokenSerializer})
    def create(self, request, *args, **kwargs):
        """A new token; the answer holds the clear token and the link, this once only."""
        form = StudyTokenCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        new = tokens.create_token(
            form.validated_data["study"], scope=form.validated_data["scope"], created_by=request.user
        )
        data = NewStudyTokenSerializer(new.row, context=self.get_serializer_context()).data
        data.update(token=new.clear, url=new.url)
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=StudyTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke the token now; the link then shows "revoked" (410)."""
        token = self.get_object()
        token.revoke()
        return Response(self.get_serializer(token).data)
