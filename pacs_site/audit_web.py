"""The audit events of the web process, in one place (each view calls one
function here; none of them ever raises into the view).

- DICOMweb (`dicomweb`): a QIDO-RS search is a query event with its keys;
  a WADO-RS retrieve, metadata or rendered request, and a WADO-URI
  request, a read of its study; a STOW-RS request a store.  Frames,
  bulk data and thumbnails are not recorded: a viewer asks for them by the
  hundred right after the metadata of the same study, which is.
- Patient links (`link`): the page opened, the ZIP downloaded; the actor
  is "link <id>", never the token.
- The viewer (`viewer`): staff opening studies, or a patient link's viewer.
- The REST API (`api_read`): a read of studies, series or instances.
"""

import logging

from pacs_site import audit
from pacs_site.audit import Action
from pacs_site.models import AuditOutcome

logger = logging.getLogger(__name__)

# DICOMweb view -> (action, what it is, query level)
DICOMWEB = {
    "search_studies": (Action.QUERY, "QIDO-RS studies", "STUDY"),
    "search_series": (Action.QUERY, "QIDO-RS series", "SERIES"),
    "search_instances": (Action.QUERY, "QIDO-RS instances", "IMAGE"),
    "retrieve": (Action.WEB_READ, "WADO-RS retrieve", ""),
    "metadata": (Action.WEB_READ, "WADO-RS metadata", ""),
    "rendered": (Action.WEB_READ, "WADO-RS rendered", ""),
    "wado_uri": (Action.WEB_READ, "WADO-URI", ""),
    "store": (Action.WEB_STORE, "STOW-RS", ""),
}
# QIDO parameters that are not matching keys
NOT_KEYS = {"includefield", "limit", "offset", "fuzzymatching", "requestType", "contentType", "token"}
# Patient identifiers as QIDO-RS may name them (keyword or tag)
TAG_KEYWORDS = {"00100020": "PatientID", "00100010": "PatientName", "00100030": "PatientBirthDate"}


def _outcome(response):
    return AuditOutcome.SUCCESS if response.status_code < 400 else AuditOutcome.MINOR_FAILURE


def dicomweb(request, view_name, scope, kwargs, response):
    """One event for a DICOMweb request the scope allowed (see DICOMWEB)."""
    found = DICOMWEB.get(view_name)
    if found is None:
        return None
    action, what, level = found
    try:
        study = kwargs.get("study") or (request.GET.get("studyUID", "") if view_name == "wado_uri" else "")
        details = {"service": what, "status": response.status_code}
        for part in ("series", "instance"):
            if kwargs.get(part):
                details[part] = kwargs[part]
        patient_id = ""
        if action == Action.QUERY:
            pairs = [
                (TAG_KEYWORDS.get(name, name), value)
                for name, values in request.GET.lists()
                if name not in NOT_KEYS
                for value in values
            ]
            keys = audit.query_keys(pairs)
            details.update(level=level, keys=keys)
            patient_id = keys.get("PatientID", "")
        return audit.web_read(
            request,
            action,
            token=scope.token,
            user=scope.user,
            study_uid=study,
            patient_id=patient_id,
            description=f"{what}" + (f" of study {study}" if study else ""),
            details=details,
            outcome=_outcome(response),
        )
    except Exception:
        logger.exception("DICOMweb audit event could not be made")
        return None


def link(request, token, action, *, study=None):
    """A patient link's page opened (LINK_OPEN) or a study downloaded (LINK_DOWNLOAD)."""
    try:
        study = study or token.study
        verb = "downloaded" if action == Action.LINK_DOWNLOAD else "opened"
        return audit.web_read(
            request,
            action,
            token=token,
            study_uid=study.study_instance_uid,
            patient_id=study.patient_id,
            description=f"patient link {token.pk} {verb}",
            details={"token_id": token.pk, "scope": token.scope},
        )
    except Exception:
        logger.exception("patient-link audit event could not be made")
        return None


def viewer(request, study_uids, *, token=None):
    """The viewer opened at `study_uids` (staff, or a patient link's)."""
    try:
        uids = [u for u in study_uids if u][:50]
        return audit.web_read(
            request,
            Action.VIEWER_OPEN,
            token=token,
            study_uid=uids[0] if len(uids) == 1 else "",
            description="viewer opened" + (f" at {len(uids)} studies" if len(uids) > 1 else ""),
            details={"studies": uids, **({"token_id": token.pk} if token is not None else {})},
        )
    except Exception:
        logger.exception("viewer audit event could not be made")
        return None


def api_read(request, what, *, study_uid="", patient_id="", object_id=None, count=None):
    """A REST API read of patient data: a list (with `count`) or one object."""
    try:
        details = {"resource": what, "query": dict(list(request.GET.items())[:20])}
        if object_id is not None:
            details["id"] = object_id
        if count is not None:
            details["count"] = count
        return audit.web_read(
            request,
            Action.WEB_READ,
            study_uid=study_uid,
            patient_id=patient_id,
            description=f"API {what}" + (f" {object_id}" if object_id is not None else " list"),
            details=details,
        )
    except Exception:
        logger.exception("API audit event could not be made")
        return None


class AuditedReads:
    """A DRF viewset mixin: one event per list or retrieve answered with
    patient data (`audit_what` names the resource)."""

    audit_what = "objects"

    def list(self, request, *args, **kwargs):
        response = super().list(request, *args, **kwargs)
        if response.status_code < 400:
            data = response.data
            count = data.get("count") if isinstance(data, dict) else len(data)
            api_read(request, self.audit_what, count=count)
        return response

    def retrieve(self, request, *args, **kwargs):
        response = super().retrieve(request, *args, **kwargs)
        if response.status_code < 400:
            data = response.data if isinstance(response.data, dict) else {}
            api_read(
                request,
                self.audit_what,
                object_id=kwargs.get("pk"),
                study_uid=data.get("study_instance_uid", ""),
                patient_id=data.get("patient_id", ""),
            )
        return response
