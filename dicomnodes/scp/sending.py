"""C-MOVE and C-GET: which instances a request names, and how each is sent.

Files are sent as stored when the peer accepted their transfer syntax;
otherwise they are decompressed to little endian when pydicom can (its
pixel-data handlers come with pylibjpeg), and counted as failed with a log
line when it cannot.
"""

import logging
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicomnodes.archive.storage import instance_path
from dicomnodes.models import Instance

logger = logging.getLogger(__name__)

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

# The unique key that selects instances at each level (PS3.4 C.4.2.1.4),
# as a lookup on Instance.
_LEVEL_KEYS = {
    "PATIENT": ("PatientID", "series__study__patient_id__in"),
    "STUDY": ("StudyInstanceUID", "series__study__study_instance_uid__in"),
    "SERIES": ("SeriesInstanceUID", "series__series_instance_uid__in"),
    "IMAGE": ("SOPInstanceUID", "sop_instance_uid__in"),
}
_LEVELS = {"PATIENT": ["PATIENT", "STUDY", "SERIES", "IMAGE"], "STUDY": ["STUDY", "SERIES", "IMAGE"]}


class RetrieveError(ValueError):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.comment = message[:64]


@dataclass(frozen=True, slots=True)
class Target:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


def select_instances(identifier: Dataset, *, model: str):
    """The instances a C-MOVE/C-GET identifier names (list of Target).

    `model` is "PATIENT" or "STUDY" (the information model's root).  Raises
    RetrieveError (A900) for a missing level or unique key.
    """
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in _LEVELS[model]:
        raise RetrieveError(0xA900, f"Query/Retrieve Level {level or '(none)'} not valid here")
    keyword, lookup = _LEVEL_KEYS[level]
    values = _uid_list(identifier, keyword)
    if not values:
        raise RetrieveError(0xA900, f"{keyword} is required at level {level}")
    filters = {lookup: values}
    # Upper-level unique keys that were given narrow the match (hierarchical).
    for upper in _LEVELS[model][: _LEVELS[model].index(level)]:
        upper_keyword, upper_lookup = _LEVEL_KEYS[upper]
        upper_values = _uid_list(identifier, upper_keyword)
        if upper_values:
            filters[upper_lookup] = upper_values
    rows = Instance.objects.filter(**filters).order_by("series__series_number", "instance_number", "pk")
    return [Target(*row) for row in rows.values_list("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid")]


def _uid_list(identifier, keyword):
    value = identifier.get(keyword)
    if value is None:
        return []
    value = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    return [str(v).strip() for v in value if str(v).strip() and str(v).strip() != "*"]


def contexts_for(targets):
    """Presentation contexts to propose to a C-MOVE destination: each stored
    (SOP class, transfer syntax) as it is, plus little endian for every SOP
    class (what we can decompress to).  At most 128 (PS3.8 9.3.2.2)."""
    contexts, seen = [], set()
    for t in targets:
        if (t.sop_class_uid, t.transfer_syntax_uid) not in seen and t.transfer_syntax_uid not in UNCOMPRESSED:
            seen.add((t.sop_class_uid, t.transfer_syntax_uid))
            contexts.append(build_context(t.sop_class_uid, [t.transfer_syntax_uid]))
    for sop_class in sorted({t.sop_class_uid for t in targets}):
        contexts.append(build_context(sop_class, UNCOMPRESSED))
    if len(contexts) > 128:
        raise RetrieveError(0xA701, "Too many SOP class/transfer syntax pairs for one association")
    return contexts


class StoredFile(Dataset):
    """A stored instance that goes over the wire as it is on disk.

    pynetdicom's C-MOVE/C-GET service wants a Dataset for every sub-operation
    and would decode and re-encode it (36 instances/s for 512×512 CT here);
    `send_files_raw()` makes the association send this one from its file,
    bytes as stored, with pynetdicom's own chunked file sending."""

    def __init__(self, target, path):
        super().__init__()
        self.SOPClassUID = target.sop_class_uid
        self.SOPInstanceUID = target.sop_instance_uid
        self.file_meta = pydicom.dataset.FileMetaDataset()
        self.file_meta.TransferSyntaxUID = target.transfer_syntax_uid
        self._stored_path = str(path)


def send_files_raw(assoc):
    """Let `assoc.send_c_store` send StoredFile datasets from their files
    (once per association: several C-GETs may run on one)."""
    if getattr(assoc, "_sends_files_raw", False):
        return
    assoc._sends_files_raw = True
    original = assoc.send_c_store

    def send_c_store(dataset, *args, **kwargs):
        if isinstance(dataset, StoredFile):
            return original(dataset._stored_path, *args, **kwargs)
        return original(dataset, *args, **kwargs)

    assoc.send_c_store = send_c_store


def dataset_for(target, accepted_contexts):
    """The Dataset to send for `target` over an association with these
    accepted contexts; a placeholder that fails the sub-operation (its SOP
    Instance UID lands in the Failed SOP Instance UID List) when it cannot go."""
    accepted = {}
    for cx in accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).update(str(ts) for ts in cx.transfer_syntax)
    syntaxes = accepted.get(target.sop_class_uid, set())
    path = instance_path(target.sop_instance_uid)
    if target.transfer_syntax_uid in syntaxes:
        if not path.is_file():
            logger.error("cannot read stored instance %s: the file is missing", path.name[:12])
            return _failure(target)
        return StoredFile(target, path)
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        logger.error("cannot read stored instance %s: %s", path.name[:12], exc)
        return _failure(target)
    usable = [ts for ts in UNCOMPRESSED if ts in syntaxes]
    if not usable:
        logger.error(
            "instance not sent: the peer accepted no transfer syntax we can provide for SOP class %s",
            target.sop_class_uid,
        )
        return _failure(target)
    if UID(target.transfer_syntax_uid).is_compressed:
        try:
            ds.decompress()
        except Exception as exc:  # pydicom raises assorted errors per codec
            logger.error(
                "instance not sent: cannot decompress %s (%s): %s",
                UID(target.transfer_syntax_uid).name,
                target.transfer_syntax_uid,
                exc,
            )
            return _failure(target)
    ds.file_meta.TransferSyntaxUID = usable[0]
    # Encoded by pynetdicom in the syntax the peer accepted (it refuses a
    # dataset whose original encoding differs from the file meta's).
    ds.set_original_encoding(usable[0].is_implicit_VR, usable[0].is_little_endian)
    return ds


def _failure(target):
    ds = Dataset()
    ds.SOPClassUID = target.sop_class_uid
    ds.SOPInstanceUID = target.sop_instance_uid
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.999"  # matches no context: the send fails
    return ds
