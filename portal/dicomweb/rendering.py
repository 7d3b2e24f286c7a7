"""Rendered frames (PS3.18 10.4.1.1.3 and 8.3.5, WADO-URI 9): one frame of
one instance as JPEG or PNG, windowed as the previews are, within the
"largest previewed frame" budget.  WADO-RS `rendered`/`thumbnail` and
WADO-URI's image content types share `rendering_answer`."""

import logging

from django.http import HttpResponse

from portal.dicomweb import pixels as px
from portal.dicomweb.access import error
from portal.dicomweb.media import Wanted, parse_accept
from portal.dicomweb.retrieval import Budgets

logger = logging.getLogger(__name__)

FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}


def image_format(accept):
    """(media type, PIL format) of the first acceptable image type, or None."""
    for w in parse_accept(accept, default=Wanted("image/jpeg")):
        for media_type, name in FORMATS.items():
            if w.matches(media_type):
                return media_type, name
    return None


def rendering_answer(request, instance, *, index, accept, quality=None, viewport=None, window=None, size=None):
    """The answer for frame `index` (0-based; None: the middle frame) of
    `instance`: 406 when no JPEG or PNG is acceptable, 400 for a malformed
    parameter, 404 when there is no image or it is above the budget."""
    chosen = image_format(accept)
    if chosen is None:
        return error(406, "rendered images are image/jpeg or image/png")
    media_type, name = chosen
    try:
        port = _numbers(viewport, 2, "viewport", integer=True)  # width, height
        how = px.Rendering(
            image_format=name,
            window=_numbers(window, 2, "window"),
            size=(port[1], port[0]) if port else size,
            quality=_quality(quality),
        )
    except ValueError as exc:
        return error(400, str(exc))
    budgets = Budgets.load()
    try:
        stored = px.locate(instance.path)
        frame = stored.frame_count // 2 if index is None else index
        image = px.render(
            stored, frame, how=how, max_pixels=budgets.max_pixels, max_decoded_bytes=budgets.max_decoded_bytes
        )
    except OSError:
        return error(404, "the stored file is missing")
    except px.TooLarge as exc:
        logger.info("DICOMweb rendering refused: %s", exc)
        return error(404, f"this image is too large to render: {exc}")
    except px.PixelError as exc:
        return error(404, str(exc))
    return HttpResponse(image, content_type=media_type)


def _numbers(text, count, name, *, integer=False):
    """The first `count` numbers of "a,b[,…]" (None when absent)."""
    if not text:
        return None
    try:
        values = [(int if integer else float)(v) for v in text.split(",")[:count]]
    except ValueError:
        values = []
    if len(values) != count or (integer and min(values) < 1):
        raise ValueError(f"{name} takes {count} comma-separated {'positive integers' if integer else 'numbers'}")
    return tuple(values)


def _quality(text):
    if not text:
        return 90
    try:
        quality = int(text)
    except ValueError:
        quality = 0
    if not 1 <= quality <= 100:
        raise ValueError("quality is a number from 1 to 100")
    return quality
