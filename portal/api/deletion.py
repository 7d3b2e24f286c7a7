"""API: DELETE on the archive's resources (with their files).

`DELETE /api/studies/{id}/`, `/api/series/{id}/`, `/api/instances/{id}/`
need the model's delete permission (`dicomnodes.delete_study`, ...; the
viewsets' StaffModelPermissions map DELETE to it) and answer 204.  The work
is dicomnodes/lifecycle/deletion.py's: rows in one transaction, files after
the commit, one audit event naming the user.  A series or instance that
was the last of its study takes the study (and a patient left without
studies) with it.  `?reason=…` is recorded in the audit event.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response

from dicomnodes.lifecycle import deletion

_DELETERS = {
    "study": deletion.delete_studies,
    "series": deletion.delete_series,
    "instance": deletion.delete_instances,
}


class DeletionMixin:
    """Mixed into the archive's viewsets (portal/api/views.py)."""

    @extend_schema(
        parameters=[OpenApiParameter("reason", OpenApiTypes.STR, description="recorded in the audit event")],
        responses={204: None},
    )
    def destroy(self, request, *args, **kwargs):
        """Delete it with its files (and whatever is left empty above it)."""
        row = self.get_object()
        _DELETERS[row._meta.model_name](
            [row.pk],
            actor=request.user.get_username(),
            actor_kind="user",
            reason=request.query_params.get("reason", "")[:255],
            address=request.META.get("REMOTE_ADDR", ""),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
