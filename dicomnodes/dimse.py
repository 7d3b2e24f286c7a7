"""The DICOM services runscp offers: Q/R SOP classes and response statuses.

One table says, for each query/retrieve SOP class, which service it asks for
(access rules) and which information model it belongs to (matching and
retrieval).
"""

from pydicom.dataset import Dataset

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


def service_of(sop_class_uid) -> str:
    """find, move, get, echo, or store for anything else (storage classes)."""
    uid = str(sop_class_uid)
    if uid == VERIFICATION:
        return "echo"
    return QUERY_RETRIEVE.get(uid, ("store", None))[0]


def model_of(sop_class_uid) -> str:
    """PATIENT or STUDY (the root of a Q/R information model)."""
    return QUERY_RETRIEVE.get(str(sop_class_uid), ("", "STUDY"))[1]


def status(code, comment=""):
    """A status Dataset with an Error Comment (0000,0902: LO, 64 characters)."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds
