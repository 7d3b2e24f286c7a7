"""WADO-URI (PS3.18 9): one object by its UIDs, for older viewers.

`?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…` with
1. `contentType`: application/dicom (the file as stored, or converted when
   `transferSyntax` names little endian), image/jpeg or image/png (one
   frame rendered: `frameNumber`, `rows`/`columns`, `windowCenter` and
   `windowWidth`, `imageQuality`); absent, an image is image/jpeg (9.1.2.1.4)
   and anything else application/dicom; a list names choices, best first;
2. `anonymize`, `region`, `annotation` and `presentation*` are refused with
   400 rather than ignored (an answer that silently kept the patient's name,
   or showed the whole image, would be wrong).
"""

from portal.dicomweb.access import dicomweb_view, error
from portal.dicomweb.media import Multipart
from portal.dicomweb.pixels import locate
from portal.dicomweb.rendering import FORMATS, rendering_answer
from portal.dicomweb.retrieval import CONVERTIBLE, Budgets, conversion_refusal, dicom_parts, find_instances
from portal.streaming import streamed

UNSUPPORTED = ("anonymize", "region", "annotation", "presentationUID", "presentationSeriesUID")
DICOM = "application/dicom"


@dicomweb_view
def wado_uri(request, scope):
    q = request.GET
    if q.get("requestType") != "WADO":
        return error(400, "requestType=WADO is required")
    uids = [q.get("studyUID"), q.get("seriesUID"), q.get("objectUID")]
    if not all(uids):
        return error(400, "studyUID, seriesUID and objectUID are required")
    refused = [name for name in UNSUPPORTED if q.get(name)]
    if refused:
        return error(400, f"not supported: {', '.join(refused)}")
    found = find_instances(scope, *uids)
    if not found:
        return error(404, "no such object")
    instance = found[0]
    wanted = [t.split(";")[0].strip().lower() for t in q.get("contentType", "").split(",") if t.strip()]
    if not wanted:
        wanted = ["image/jpeg" if _is_image(instance) else DICOM]
    for content_type in wanted:
        if content_type == DICOM:
            return _dicom_answer(request, instance, q.get("transferSyntax"))
        if content_type in FORMATS or content_type in ("image/*", "*/*"):
            return _image_answer(request, instance, "image/jpeg" if "*" in content_type else content_type)
    return error(406, "contentType is application/dicom, image/jpeg or image/png")


def _dicom_answer(request, instance, transfer_syntax):
    """The object as a single Part 10 file (not multipart: PS3.18 9.2.1)."""
    syntax = transfer_syntax or instance.transfer_syntax_uid
    if syntax != instance.transfer_syntax_uid and syntax not in CONVERTIBLE:
        return error(406, f"the object is stored in {instance.transfer_syntax_uid}; we can convert it to little endian")
    budgets = Budgets.load()
    refusal = conversion_refusal([(instance, syntax)], max_decoded_bytes=budgets.max_decoded_bytes)
    if refusal:
        return error(406, refusal)
    multipart = _SinglePart()
    chunks = dicom_parts([(instance, syntax)], multipart, max_decoded_bytes=budgets.max_decoded_bytes)
    response = streamed(request, chunks, content_type=DICOM)
    response["Content-Disposition"] = f'attachment; filename="{instance.pk}.dcm"'
    return response


def _image_answer(request, instance, media_type):
    q = request.GET
    try:
        frame = int(q.get("frameNumber") or 1) - 1
        window = None
        if q.get("windowCenter") or q.get("windowWidth"):
            window = f"{float(q['windowCenter'])},{float(q['windowWidth'])}"
        rows, columns = int(q.get("rows") or 0), int(q.get("columns") or 0)
    except (KeyError, ValueError):
        return error(400, "frameNumber, rows and columns are integers; windowCenter and windowWidth go together")
    if frame < 0 or rows < 0 or columns < 0:
        return error(400, "frameNumber, rows and columns are positive")
    return rendering_answer(
        request,
        instance,
        index=frame,
        accept=media_type,
        quality=q.get("imageQuality"),
        window=window,
        size=(rows or None, columns or None) if rows or columns else None,
    )


def _is_image(instance):
    """Whether the object has pixels to render (its header says Rows)."""
    try:
        return "Rows" in locate(instance.path).header
    except Exception:  # an unreadable file: its DICOM answer will say so
        return False


class _SinglePart(Multipart):
    """`dicom_parts` writing no multipart framing: one file as the body."""

    def __init__(self):
        super().__init__(DICOM)

    def part(self, content_type, *, first=False, location=None):
        return b""

    def end(self, *, empty=False):
        return b""
