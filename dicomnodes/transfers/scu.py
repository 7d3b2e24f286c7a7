"""Us as a client: C-FIND against a known peer (the first piece of the
client side; sending and retrieving as queued jobs come with their issue).

Our AE title is the calling AE; the service time-out bounds the connection,
the negotiation and every DIMSE wait.
"""

import threading
import time

from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicomnodes.dimse import PENDING_STATUSES, Status
from dicomnodes.models import DicomServerSettings
from dicomnodes.query import levels
from dicomnodes.scp.compat import NODELAY_HANDLERS
from dicomnodes.transfers.echo import why_not_established

STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)


SERIES_KEYS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
)


class ScuError(RuntimeError):
    """The peer could not be asked, or refused: the message says why."""


def find_studies(peer, *, patient_id="", patient_name="", accession="", date="", modality="", timeout=None):
    """Study-level C-FIND (Study Root) at `peer`; a list of answer Datasets."""
    query = levels.identifier("STUDY", "", SpecificCharacterSet="ISO_IR 192", **dict.fromkeys(STUDY_KEYS, ""))
    query.PatientID = patient_id
    query.PatientName = patient_name
    query.AccessionNumber = accession
    query.StudyDate = date
    query.ModalitiesInStudy = modality
    return find(peer, query, timeout=timeout)


def find_series(peer, study_uid, *, timeout=None):
    """Series-level C-FIND (Study Root) of one study at `peer`."""
    keys = {k: "" for k in SERIES_KEYS if k not in ("StudyInstanceUID", "SeriesInstanceUID")}
    query = levels.identifier("SERIES", "", above=[study_uid], SpecificCharacterSet="ISO_IR 192", **keys)
    return find(peer, query, timeout=timeout)


def find(peer, identifier, *, timeout=None):
    settings = DicomServerSettings.load()
    timeout = timeout or settings.service_timeout
    ae = AE(ae_title=settings.our_ae_title())
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    for name in ("connection_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
        setattr(ae, name, timeout)
    connected = threading.Event()
    started = time.monotonic()
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.set()), *NODELAY_HANDLERS],
    )
    if not assoc.is_established:
        raise ScuError(why_not_established(assoc, connected, started, peer.host, peer.port, peer.ae_title, timeout))
    answers = []
    asked = time.monotonic()
    try:
        for status, answer in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            if status is None or "Status" not in status:
                # pynetdicom yields an empty status for an abort, a closed
                # connection and a DIMSE time-out alike: time tells them apart.
                if time.monotonic() - asked < timeout * 0.9:
                    raise ScuError("the peer aborted the association (does it know our AE title?)")
                raise ScuError(f"peer did not answer within {timeout:g} s")
            code = status.Status
            if code in PENDING_STATUSES:
                answers.append(answer)
            elif code != Status.SUCCESS:
                comment = status.get("ErrorComment", "")
                raise ScuError(f"C-FIND failed: status 0x{code:04X}{f' ({comment})' if comment else ''}")
    finally:
        if assoc.is_established:
            assoc.release()
    return answers
