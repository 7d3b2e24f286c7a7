"""Us as a client: C-FIND against a known peer (the first piece of the
client side; sending and retrieving as queued jobs come with their issue).

Our AE title is the calling AE; the service time-out bounds the connection,
the negotiation and every DIMSE wait.
"""

from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from dicomnodes.dimse import PENDING_STATUSES, Status
from dicomnodes.models import DicomServerSettings
from dicomnodes.net import ProtocolError
from dicomnodes.net.association import PeerAborted, PeerGone, TimedOut
from dicomnodes.query import levels
from dicomnodes.scp.outgoing import CannotConnect
from dicomnodes.scp.requesting import NoContext, Requestor

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
    requestor = Requestor()
    try:
        requestor.connect(
            peer.host,
            peer.port,
            calling_ae=settings.our_ae_title(),
            called_ae=peer.ae_title,
            contexts=[build_context(StudyRootQueryRetrieveInformationModelFind)],
            timeout=timeout,
        )
    except CannotConnect as exc:
        raise ScuError(str(exc)) from None
    answers = []
    try:
        for command, answer in requestor.find(StudyRootQueryRetrieveInformationModelFind, identifier):
            code = command.Status
            if code in PENDING_STATUSES:
                if answer is not None:
                    answers.append(answer)
            elif code != Status.SUCCESS:
                comment = command.ErrorComment or ""
                raise ScuError(f"C-FIND failed: status 0x{code or 0:04X}{f' ({comment})' if comment else ''}")
    except NoContext:
        raise ScuError("the peer accepted the association but not Study Root C-FIND") from None
    except TimedOut:
        raise ScuError(f"peer did not answer within {timeout:g} s") from None
    except (PeerGone, PeerAborted, ProtocolError):
        raise ScuError("the peer aborted the association (does it know our AE title?)") from None
    finally:
        requestor.finish()
    return answers
