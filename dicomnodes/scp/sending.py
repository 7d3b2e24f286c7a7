"""C-MOVE and C-GET, and transfer jobs: how each selected instance is sent
(`dicomnodes.query.selection` says which instances a request names).

Files are sent as stored when the peer accepted their transfer syntax;
otherwise they are decompressed to little endian when pydicom can (its
pixel-data handlers come with pylibjpeg), and counted as failed with a log
line when it cannot, or when the header says the pixel data would decode to
more than the DICOM server setting "largest decoded pixel data" (checked
before anything is decoded: a 2,000-frame image decodes to gigabytes).
"""

import logging

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicomnodes.archive.storage import instance_path
from dicomnodes.dimse import Status
from dicomnodes.models import DicomServerSettings
from dicomnodes.query.selection import RetrieveError

logger = logging.getLogger(__name__)

UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def contexts_for(targets):
    """Presentation contexts to propose to a C-MOVE destination: each stored
    (SOP class, transfer syntax) in a context of its own, so that the file
    can go as it is (a peer offered explicit and implicit VR in one context
    may pick the other one, and the instance is then re-encoded), plus
    little endian for every SOP class (what we can decompress to).  At most
    128 (PS3.8 9.3.2.2)."""
    contexts, seen = [], set()
    for t in targets:
        if (t.sop_class_uid, t.transfer_syntax_uid) not in seen:
            seen.add((t.sop_class_uid, t.transfer_syntax_uid))
            contexts.append(build_context(t.sop_class_uid, [t.transfer_syntax_uid]))
    for sop_class in sorted({t.sop_class_uid for t in targets}):
        contexts.append(build_context(sop_class, UNCOMPRESSED))
    if len(contexts) > 128:
        raise RetrieveError(
            Status.OUT_OF_RESOURCES_SUB_OPERATIONS, "Too many SOP class/transfer syntax pairs for one association"
        )
    return contexts


def decode_budget() -> int:
    """Bytes a converted instance may decode to (read once per request)."""
    return DicomServerSettings.load().max_decoded_mb * 2**20


def dataset_for(target, accepted_contexts, *, max_decoded_bytes):
    """The Dataset to send for `target` over an association with these
    accepted contexts (pynetdicom PresentationContexts); a placeholder that
    fails the sub-operation (its SOP Instance UID lands in the Failed SOP
    Instance UID List) when it cannot go.  Callers send a file the peer
    takes as stored from the file itself (`outgoing.Sender`, WADO-RS), and
    ask here for the others.

    1. the peer accepted the stored syntax: the file read as it is;
    2. else little endian, when the peer accepted it: a compressed file is
       decoded, unless its header says the pixel data would take more than
       `max_decoded_bytes` (nothing is decoded then);
    3. anything else fails the sub-operation with a log line.
    """
    accepted = {}
    for cx in accepted_contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).update(str(ts) for ts in cx.transfer_syntax)
    syntaxes = accepted.get(target.sop_class_uid, set())
    path = instance_path(target.sop_instance_uid)
    if target.transfer_syntax_uid in syntaxes:
        try:
            return pydicom.dcmread(path)
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
    compressed = UID(target.transfer_syntax_uid).is_compressed
    try:
        if compressed:
            size = decoded_size(pydicom.dcmread(path, stop_before_pixels=True))
            if size > max_decoded_bytes:
                logger.error(
                    "instance %s not sent: converting it to %s would decode %d MB of pixel data, above the "
                    "limit of %d MB (DICOM server settings: largest decoded pixel data)",
                    path.name[:12],
                    usable[0].name,
                    -(-size // 2**20),
                    max_decoded_bytes // 2**20,
                )
                return _failure(target)
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        logger.error("cannot read stored instance %s: %s", path.name[:12], exc)
        return _failure(target)
    if compressed:
        try:
            # The same instance in another transfer syntax: its SOP Instance
            # UID stays (pydicom would make a new one), so the peer gets the
            # UID it asked for and the command and data set agree (DCMTK's
            # storescp answers A900 otherwise).
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # pydicom raises assorted errors per codec
            logger.error(
                "instance not sent: cannot decompress %s (%s): %s",
                UID(target.transfer_syntax_uid).name,
                target.transfer_syntax_uid,
                exc,
            )
            return _failure(target)
    ds.file_meta.TransferSyntaxUID = usable[0]
    # Encoded in the syntax the peer accepted (pynetdicom's dsutils.encode,
    # in outgoing.Sender, refuses a dataset whose original encoding differs
    # from the file meta's).
    ds.set_original_encoding(usable[0].is_implicit_VR, usable[0].is_little_endian)
    return ds


def decoded_size(header) -> int:
    """Bytes the pixel data of `header` takes decoded: Rows × Columns ×
    Samples per Pixel × Number of Frames × Bits Allocated / 8 (a header that
    does not say counts as too large)."""
    try:
        values = [int(header.get(k, default) or default) for k, default in _SIZE_ELEMENTS]
    except (TypeError, ValueError):
        return 2**63
    rows, columns, samples, frames, bits = values
    return rows * columns * samples * frames * -(-bits // 8)


_SIZE_ELEMENTS = [("Rows", 0), ("Columns", 0), ("SamplesPerPixel", 1), ("NumberOfFrames", 1), ("BitsAllocated", 16)]


def _failure(target):
    ds = Dataset()
    ds.SOPClassUID = target.sop_class_uid
    ds.SOPInstanceUID = target.sop_instance_uid
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.999"  # matches no context: the send fails
    return ds
