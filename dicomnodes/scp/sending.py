"""C-MOVE and C-GET, and transfer jobs: how each selected instance is sent
(`dicomnodes.query.selection` says which instances a request names).

Files are sent as stored when the peer accepted their transfer syntax;
otherwise they are decompressed to little endian when pydicom can (its
pixel-data handlers come with pylibjpeg), and counted as failed with a log
line when it cannot.
"""

import logging

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicomnodes.archive.storage import instance_path
from dicomnodes.dimse import Status
from dicomnodes.query.selection import RetrieveError

logger = logging.getLogger(__name__)

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


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
        raise RetrieveError(
            Status.OUT_OF_RESOURCES_SUB_OPERATIONS, "Too many SOP class/transfer syntax pairs for one association"
        )
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
