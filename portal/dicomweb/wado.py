"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered.

Every view finds its instances within the request's scope first (none: 404,
whether the study does not exist or lies outside a patient link's scope),
reads the budgets, then answers.  Multipart bodies are streamed from the
stored files (`retrieval.py`); nothing holds more than one instance, or one
frame decoded, in memory.
"""

import logging

from django.http import HttpResponse
from django.urls import reverse

from portal.dicomweb import pixels as px
from portal.dicomweb.access import dicomweb_view, error
from portal.dicomweb.instancejson import parse_tag
from portal.dicomweb.media import Multipart, Wanted, parse_accept
from portal.dicomweb.metacache import instance_json_bytes
from portal.dicomweb.rendering import rendering_answer
from portal.dicomweb.retrieval import (
    OCTET_STREAM,
    RETRIEVE_FIELDS,
    Budgets,
    conversion_refusal,
    dicom_parts,
    dicom_syntax,
    find_instances,
    frame_bytes,
    frame_media,
    frame_parts,
    is_native,
    native_value_parts,
    parse_frame_list,
    representative,
    stored_pieces,
)
from portal.previews import PREVIEW_SIZE
from portal.streaming import PiecesResponse, streamed

logger = logging.getLogger(__name__)

NOT_FOUND = "no such study, series or instance"


@dicomweb_view
def retrieve(request, scope, study, series=None, instance=None):
    """Whole instances as `multipart/related; type="application/dicom"`."""
    instances = find_instances(scope, study, series, instance, only=RETRIEVE_FIELDS)
    if not instances:
        return error(404, NOT_FOUND)
    default = Wanted("application/dicom", multipart=True)
    wanted = [w for w in parse_accept(request.headers.get("Accept"), default=default) if w.matches("application/dicom")]
    plan = [(i, dicom_syntax(i.transfer_syntax_uid, wanted)) for i in instances]
    refused = sorted({i.transfer_syntax_uid for i, syntax in plan if syntax is None})
    if not wanted or refused:
        return error(
            406,
            "we send application/dicom in the stored transfer syntax (transfer-syntax=* or the stored UID) "
            f"or converted to explicit VR little endian; stored here: {', '.join(refused) or 'n/a'}",
        )
    budgets = Budgets.load()
    refusal = conversion_refusal(plan, max_decoded_bytes=budgets.max_decoded_bytes)
    if refusal:
        return error(406, refusal)
    multipart = Multipart("application/dicom")
    if all(syntax == i.transfer_syntax_uid for i, syntax in plan):
        return PiecesResponse(request, stored_pieces(plan, multipart), content_type=multipart.content_type())
    chunks = dicom_parts(plan, multipart, max_decoded_bytes=budgets.max_decoded_bytes)
    return streamed(request, chunks, content_type=multipart.content_type())


@dicomweb_view
def metadata(request, scope, study, series=None, instance=None):
    """The instances' headers as a DICOM JSON array, streamed one instance
    at a time, bulk data as BulkDataURIs to our bulkdata resource."""
    instances = find_instances(scope, study, series, instance)
    if not instances:
        return error(404, NOT_FOUND)
    uris = [_bulkdata_root(request, i) for i in instances]

    def chunks():
        yield b"["
        separator = b""
        for i, root in zip(instances, uris, strict=True):
            try:
                body = instance_json_bytes(i.path, root)
            except Exception as exc:  # missing or unreadable file: left out
                logger.error("DICOMweb metadata: instance %s left out: %s", i.path.name[:12], exc)
                continue
            yield separator + body
            separator = b","
        yield b"]"

    return streamed(request, chunks(), content_type="application/dicom+json")


@dicomweb_view
def frames(request, scope, study, series, instance, frames):
    indices = parse_frame_list(frames)
    if indices is None:
        return error(400, "frames are a comma-separated list of numbers from 1")
    return _frames_answer(request, scope, uids=(study, series, instance), indices=indices)


@dicomweb_view
def bulkdata(request, scope, study, series, instance, tag):
    """The bulk data our metadata points to: the Pixel Data (native: the
    whole value as one part; encapsulated: its frames, as `…/frames`), or a
    top-level binary element of the header."""
    tag_number = parse_tag(tag)
    if tag_number is None:
        return error(404, "no such bulk data")
    if tag_number == px.PIXEL_DATA:
        found = find_instances(scope, study, series, instance)
        if not found:
            return error(404, NOT_FOUND)
        stored = px.locate(found[0].path)
        if not is_native(stored):
            return _frames_answer(
                request, scope, uids=(study, series, instance), indices=list(range(stored.frame_count))
            )
        if not _wants_octet_stream(request):
            return error(406, "native pixel data is sent as application/octet-stream")
        multipart = Multipart(OCTET_STREAM)
        return streamed(request, native_value_parts(stored, multipart), content_type=multipart.content_type())
    found = find_instances(scope, study, series, instance)
    if not found:
        return error(404, NOT_FOUND)
    element = px.locate(found[0].path).header.get(tag_number)
    if element is None or not isinstance(element.value, bytes):
        return error(404, "no such bulk data")
    if not _wants_octet_stream(request):
        return error(406, "bulk data is sent as application/octet-stream")
    multipart = Multipart(OCTET_STREAM)
    body = multipart.part(OCTET_STREAM, first=True) + element.value + multipart.end()
    return HttpResponse(body, content_type=multipart.content_type())


@dicomweb_view
def rendered(request, scope, study, series=None, instance=None, frames=None):
    """JPEG or PNG of one frame: the instance's first (or the first frame
    named), or the representative instance of a study or series."""
    indices = [0] if frames is None else parse_frame_list(frames)
    if indices is None:
        return error(400, "frames are a comma-separated list of numbers from 1")
    return _rendered_answer(request, scope, uids=(study, series, instance), index=indices[0], size=None)


@dicomweb_view
def thumbnail(request, scope, study, series=None, instance=None):
    """A small rendering (256 pixels on its longest side, or `viewport`) of
    the middle frame of the representative instance."""
    return _rendered_answer(
        request, scope, uids=(study, series, instance), index=None, size=(PREVIEW_SIZE, PREVIEW_SIZE)
    )


def _frames_answer(request, scope, *, uids, indices):
    found = find_instances(scope, *uids)
    if not found:
        return error(404, NOT_FOUND)
    try:
        stored = px.locate(found[0].path)
    except OSError:
        return error(404, "the stored file is missing")
    if stored.offset is None and not stored.syntax.is_deflated:
        return error(404, "the instance has no pixel data")
    if max(indices) >= stored.frame_count:
        return error(404, f"the instance has {stored.frame_count} frame(s)")
    default = Wanted(OCTET_STREAM, multipart=True)
    choice = frame_media(stored, parse_accept(request.headers.get("Accept"), default=default))
    if choice is None:
        return error(406, "frames are sent as application/octet-stream, or in their stored syntax's media type")
    as_stored, part_type = choice
    budgets = Budgets.load()
    try:  # the first frame before the answer starts: its failure is still a status
        first = frame_bytes(stored, indices[0], as_stored=as_stored, max_decoded_bytes=budgets.max_decoded_bytes)
    except px.TooLarge as exc:
        return error(406, f"{exc}; ask for the stored transfer syntax (transfer-syntax=*)")
    except px.PixelError as exc:
        return error(404, str(exc))
    multipart = Multipart(part_type)
    chunks = frame_parts(
        stored,
        indices,
        multipart=multipart,
        as_stored=as_stored,
        first_frame=first,
        max_decoded_bytes=budgets.max_decoded_bytes,
    )
    return streamed(request, chunks, content_type=multipart.content_type())


def _rendered_answer(request, scope, *, uids, index, size):
    study, series, instance = uids
    found = find_instances(scope, study, series, instance)
    if not found:
        return error(404, NOT_FOUND)
    chosen = found[0] if instance else representative(found, whole_study=series is None)
    return rendering_answer(
        request,
        chosen,
        index=index,
        accept=request.headers.get("Accept"),
        quality=request.GET.get("quality"),
        viewport=request.GET.get("viewport"),
        window=request.GET.get("window"),
        size=size,
    )


def _wants_octet_stream(request):
    default = Wanted(OCTET_STREAM, multipart=True)
    return any(w.matches(OCTET_STREAM) for w in parse_accept(request.headers.get("Accept"), default=default))


def _bulkdata_root(request, instance):
    """The absolute URL of `…/instances/{uid}/bulkdata` under the root the
    request came through (staff, or the same patient link)."""
    match = request.resolver_match
    kwargs = {
        "study": instance.series.study.study_instance_uid,
        "series": instance.series.series_instance_uid,
        "instance": instance.sop_instance_uid,
        "tag": "00000000",
    }
    if "token" in match.kwargs:
        kwargs["token"] = match.kwargs["token"]
    url = reverse(f"{match.namespace}:bulkdata", kwargs=kwargs)
    return request.build_absolute_uri(url).rsplit("/", 1)[0]
