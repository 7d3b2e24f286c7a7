"""The DICOM vocabulary every part of dicomnodes shares (and worklist's MWL
responder): DIMSE statuses, the Q/R SOP classes and what they ask for,
A-ASSOCIATE-RJ reasons, and who is calling.

Statuses start from `pynetdicom.status.Status` (SUCCESS, CANCEL, PENDING,
MOVE_DESTINATION_UNKNOWN) and add, under our own names, the codes it has no
name for.
"""

import enum
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.status import Status as _Pynetdicom


class Status(enum.IntEnum):
    """DIMSE status codes (PS3.7 C; PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)."""

    SUCCESS = _Pynetdicom.SUCCESS  # 0000
    CANCEL = _Pynetdicom.CANCEL  # FE00
    PENDING = _Pynetdicom.PENDING  # FF00
    PENDING_WARNING = 0xFF01  # C-FIND: pending, some optional keys not supported
    MOVE_DESTINATION_UNKNOWN = _Pynetdicom.MOVE_DESTINATION_UNKNOWN  # A801
    PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: general failure (the index could not be written)
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.7 C.5: refused, SOP class not supported
    NOT_AUTHORISED = 0x0124  # PS3.7 C.5: refused, not authorised
    OUT_OF_RESOURCES = 0xA700  # storage: out of resources (disk full, cannot write)
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA701  # C-MOVE/C-GET: cannot calculate/perform sub-operations
    IDENTIFIER_DOES_NOT_MATCH = 0xA900  # PS3.4 C.4.1.1.4: identifier does not match SOP class
    SUB_OPERATIONS_FAILED = 0xB000  # C-MOVE/C-GET warning: one or more sub-operations failed
    UNABLE_TO_PROCESS = 0xC000  # failed, unable to process (Q/R); "cannot understand" for storage

    CANNOT_UNDERSTAND = 0xC000  # storage (PS3.4 B.2.3): an alias of UNABLE_TO_PROCESS


PENDING_STATUSES = (Status.PENDING, Status.PENDING_WARNING)

# A-ASSOCIATE-RJ (PS3.8 9.3.4): result 2 is rejected-transient (try later).
REJECTED_TRANSIENT = 2
# A-ASSOCIATE-RJ (result, source, reason) we send: rejected-permanent, by the service user.
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
# Rejected-transient, by the service provider (presentation): local limit exceeded (PS3.8 9.3.4).
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)

# A-ASSOCIATE-RJ (source, reason) in words (PS3.8 9.3.4).
REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title {calling} (ours) not recognised by the peer",
    (1, 7): "called AE title {called} not recognised by the peer",
    (2, 1): "no reason given (by the peer's DICOM service provider)",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded (the peer has too many associations)",
}


def rejection_text(result, source, reason, *, calling, called):
    """Why a peer rejected our association, in words."""
    text = REJECT_REASONS.get((source, reason), f"reason {reason} from source {source}")
    text = "association rejected: " + text.format(calling=calling, called=called)
    if result == REJECTED_TRANSIENT:
        text += " (transient: try again later)"
    return text


# SOP Class UID: (service, information model root)  (PS3.4 C.6, K.6)
QUERY_RETRIEVE = {
    "1.2.840.10008.5.1.4.1.2.1.1": ("find", "PATIENT"),  # Patient Root Q/R FIND
    "1.2.840.10008.5.1.4.1.2.1.2": ("move", "PATIENT"),  # Patient Root Q/R MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": ("get", "PATIENT"),  # Patient Root Q/R GET
    "1.2.840.10008.5.1.4.1.2.2.1": ("find", "STUDY"),  # Study Root Q/R FIND
    "1.2.840.10008.5.1.4.1.2.2.2": ("move", "STUDY"),  # Study Root Q/R MOVE
    "1.2.840.10008.5.1.4.1.2.2.3": ("get", "STUDY"),  # Study Root Q/R GET
    "1.2.840.10008.5.1.4.31": ("find", "WORKLIST"),  # Modality Worklist FIND
}
VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the calling AE title and the peer's address."""

    ae_title: str
    address: str


def service_of(sop_class_uid) -> str:
    """find, move, get, echo, or store for anything else (storage classes)."""
    uid = str(sop_class_uid)
    if uid == VERIFICATION:
        return "echo"
    return QUERY_RETRIEVE.get(uid, ("store", None))[0]


def model_of(sop_class_uid) -> str:
    """PATIENT, STUDY (the root of a Q/R information model) or WORKLIST."""
    return QUERY_RETRIEVE.get(str(sop_class_uid), ("", "STUDY"))[1]


def status(code, comment=""):
    """A status Dataset with an Error Comment (0000,0902: LO, 64 characters)."""
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds
