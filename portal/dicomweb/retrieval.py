"""What WADO-RS and WADO-URI share: the instances a request names within its
scope, the choice of transfer syntax per instance, the multipart bodies of
whole instances and of frames, and the budgets read once per request."""

import io
import logging
import os
from dataclasses import dataclass

from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from dicomnodes.scp.sending import dataset_for, decode_budget, decoded_size
from portal.dicomweb.media import FRAME_MEDIA_TYPES, NATIVE, Multipart, with_syntax
from portal.dicomweb.pixels import PixelError, StoredPixels, decoded_frame, locate, stored_frame
from portal.models import HttpSettings
from portal.streaming import FileRange, file_chunks

logger = logging.getLogger(__name__)

CONVERTIBLE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
OCTET_STREAM = "application/octet-stream"


# What a whole-instance retrieve reads of each row: building the series and
# study of 300 rows as well (select_related) took 47 ms of a series' answer.
RETRIEVE_FIELDS = ("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "series_id")


def find_instances(scope, study, series=None, instance=None, *, only=None):
    """The instances a path names, within `scope`, in series then instance
    order (an empty list: 404 — a study outside the scope is not revealed);
    with their series and study, or with `only` those fields."""
    found = scope.instances().filter(series__study__study_instance_uid=study)
    if series is not None:
        found = found.filter(series__series_instance_uid=series)
    if instance is not None:
        found = found.filter(sop_instance_uid=instance)
    found = found.only(*only) if only else found.select_related("series__study")
    return list(
        found.order_by("series__series_number", "series__series_instance_uid", "instance_number", "sop_instance_uid")
    )


def representative(instances, *, whole_study):
    """The instance a study or series rendering shows: the middle instance
    of the (first) series, as the previews choose."""
    if whole_study:
        first = instances[0].series_id
        instances = [i for i in instances if i.series_id == first]
    return instances[len(instances) // 2]


@dataclass(frozen=True)
class Budgets:
    """Read once per request, before streaming (the stream runs in another
    thread without the database)."""

    max_decoded_bytes: int
    max_pixels: int

    @classmethod
    def load(cls):
        return cls(decode_budget(), HttpSettings.load().preview_max_megapixels * 1_000_000)


# --- whole instances (application/dicom) -------------------------------------------


def dicom_syntax(stored, wanted):
    """The transfer syntax to send a stored instance in, given the Accept
    ranges that admit application/dicom (best first): the stored one when a
    range allows it (no transfer-syntax said, `*`, or that UID), else little
    endian when a range asks for it (converted), else None (406)."""
    for w in wanted:
        if w.allows_syntax(stored):
            return stored
        if w.transfer_syntax in CONVERTIBLE:
            return w.transfer_syntax
    return None


def conversion_refusal(plan, *, max_decoded_bytes):
    """Why the instances to convert cannot be (the first whose header says
    its pixel data would decode above the budget), or None; checked before
    the answer starts, so that it is a 406 and not a part left out."""
    for instance, syntax in plan:
        if syntax == instance.transfer_syntax_uid or not UID(instance.transfer_syntax_uid).is_compressed:
            continue
        try:
            size = decoded_size(locate(instance.path).header)
        except (OSError, InvalidDicomError):
            continue  # dataset_for logs it and leaves the part out
        if size > max_decoded_bytes:
            return (
                f"converting an instance would decode {-(-size // 2**20)} MB of pixel data, above the limit of "
                f"{max_decoded_bytes // 2**20} MB (DICOM server settings: largest decoded pixel data); "
                "ask for the stored transfer syntax (transfer-syntax=*)"
            )
    return None


def stored_pieces(plan, multipart: Multipart):
    """The multipart body of instances that all go as stored, as pieces of a
    `PiecesResponse` (its length known before it starts): a missing file
    is left out, as `dicom_parts` does."""
    pieces, first = [], True
    for instance, syntax in plan:
        path = instance.path
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            logger.error("WADO: stored instance %s is missing", path.name[:12])
            continue
        pieces.append(multipart.part(with_syntax("application/dicom", syntax), first=first))
        pieces.append(FileRange(path, 0, size, size))
        first = False
    pieces.append(multipart.end(empty=first))
    return pieces


def dicom_parts(plan, multipart: Multipart, *, max_decoded_bytes):
    """The multipart body of whole instances: `plan` holds (instance,
    syntax) pairs; a stored file goes as it is, in chunks, a converted one
    is decoded by `dataset_for` (as C-MOVE converts), one at a time."""
    first = True
    for instance, syntax in plan:
        path = instance.path
        if syntax == instance.transfer_syntax_uid:
            if not path.is_file():
                logger.error("WADO: stored instance %s is missing", path.name[:12])
                continue
            yield multipart.part(with_syntax("application/dicom", syntax), first=first)
            yield from file_chunks(path)
        else:
            context = build_context(instance.sop_class_uid, [syntax])
            ds = dataset_for(instance, [context], max_decoded_bytes=max_decoded_bytes)
            if str(ds.file_meta.TransferSyntaxUID) != syntax:
                continue  # dataset_for said why in the log
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            yield multipart.part(with_syntax("application/dicom", syntax), first=first)
            yield out.getvalue()
        first = False
    yield multipart.end(empty=first)


# --- frames -------------------------------------------------------------------------


def frame_media(pixels: StoredPixels, wanted):
    """(stored?, part media type) for the frames of `pixels`, or None (406).

    Encapsulated frames go as stored when a range names their media type
    (image/jpeg, …) or `application/octet-stream; transfer-syntax=*` (or the
    stored UID) as OHIF asks; otherwise they are decoded to little endian
    octet-stream, the PS3.18 default.  Native frames are octet-stream only."""
    stored = str(pixels.syntax)
    compressed = pixels.encapsulated and pixels.offset is not None
    media = FRAME_MEDIA_TYPES.get(stored)
    for w in wanted:
        if compressed and media and w.media_type in (media, media.split("/")[0] + "/*") and w.allows_syntax(stored):
            return True, with_syntax(media, stored)
        if compressed and w.media_type == OCTET_STREAM and w.transfer_syntax in ("*", stored):
            return True, with_syntax(OCTET_STREAM, stored)
        if w.matches(OCTET_STREAM) and w.transfer_syntax in (None, "*", *CONVERTIBLE):
            return False, with_syntax(OCTET_STREAM, str(ExplicitVRLittleEndian))
    return None


def parse_frame_list(text):
    """[0-based indices] of "1,3,5", or None when it is not such a list."""
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        return None
    if not numbers or min(numbers) < 1:
        return None
    return [n - 1 for n in numbers]


def frame_bytes(pixels, index, *, as_stored, max_decoded_bytes):
    if as_stored:
        return stored_frame(pixels, index)
    return decoded_frame(pixels, index, max_decoded_bytes=max_decoded_bytes)


def frame_parts(pixels, indices, *, multipart, as_stored, first_frame, max_decoded_bytes):
    """The multipart body of frames, read (and decoded) one at a time;
    `first_frame` was read before the answer started, so that its failure
    could still change the status."""
    for n, index in enumerate(indices):
        try:
            data = (
                first_frame
                if n == 0
                else frame_bytes(pixels, index, as_stored=as_stored, max_decoded_bytes=max_decoded_bytes)
            )
        except PixelError as exc:
            logger.error("WADO: frames of %s cut short: %s", pixels.path.name[:12], exc)
            break
        yield multipart.part(multipart.part_type, first=n == 0)
        yield data
    yield multipart.end(empty=not indices)


def native_value_parts(pixels, multipart):
    """The whole native Pixel Data value as one part, read in chunks."""
    yield multipart.part(multipart.part_type, first=True)
    yield from file_chunks(pixels.path, offset=pixels.offset, length=pixels.length)
    yield multipart.end()


def is_native(pixels):
    return pixels.offset is not None and not pixels.encapsulated and UID(pixels.syntax) in NATIVE
