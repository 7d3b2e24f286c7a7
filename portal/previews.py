"""Series previews: the middle instance rendered as a small PNG, cached.

Windowing follows the dataset: the rescale (modality LUT) first, then the
first Window Center / Window Width value pair; without a window, the pixel
range (min to max) of the image.  MONOCHROME1 is inverted; colour images
(RGB, or YBR which pydicom converts) are scaled to 8 bits as they are.

The cache lives in PACS_DATA_DIR/cache/previews, one file per SOP Instance
UID named by its SHA-256 (never a path built from a dataset value).
"""

import hashlib
import io
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import pydicom
from django.conf import settings
from PIL import Image

logger = logging.getLogger(__name__)

PREVIEW_SIZE = 256  # longest side, pixels


class NoPreview(Exception):
    """The instance has no image we can render (no pixels, unknown codec)."""


def cache_path(sop_instance_uid: str) -> Path:
    digest = hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()
    return Path(settings.PACS_DATA_DIR) / "cache" / "previews" / digest[:2] / f"{digest}.png"


def middle_instance(series):
    instances = list(series.instances.order_by("instance_number", "sop_instance_uid"))
    return instances[len(instances) // 2] if instances else None


def series_preview(series) -> Path:
    """The cached preview of `series` (rendered on first use)."""
    instance = middle_instance(series)
    if instance is None:
        raise NoPreview("the series has no instances")
    path = cache_path(instance.sop_instance_uid)
    if not path.exists():
        png = render_png(instance.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(png)
        os.replace(tmp, path)  # readers never see half a file
    return path


def render_png(dicom_path) -> bytes:
    try:
        ds = pydicom.dcmread(dicom_path)
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise NoPreview("no pixel data")
        pixels = ds.pixel_array
    except NoPreview:
        raise
    except Exception as exc:  # codecs raise many kinds of errors
        raise NoPreview(f"cannot decode the pixel data: {exc}") from exc
    image = to_image(ds, pixels)
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def to_image(ds, pixels: np.ndarray) -> Image.Image:
    """One frame of `pixels` (pydicom's pixel_array of `ds`) as an 8-bit image."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    if frames > 1:
        pixels = pixels[frames // 2]
    if samples == 3:
        return Image.fromarray(_scale(pixels.astype(np.float64), *_range(pixels)), mode="RGB")
    values = pixels.astype(np.float64) * _number(ds, "RescaleSlope", 1.0) + _number(ds, "RescaleIntercept", 0.0)
    low, high = _window(ds) or _range(values)
    gray = _scale(values, low, high)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, mode="L")


def _first(value):
    """The first value of a possibly multi-valued element."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return value[0] if len(value) else None
    return value


def _number(ds, keyword, default):
    try:
        value = _first(ds.get(keyword))
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _window(ds):
    """(low, high) from Window Center/Width (PS3.3 C.11.2.1.2, linear), or None."""
    center, width = _number(ds, "WindowCenter", None), _number(ds, "WindowWidth", None)
    if center is None or width is None or width < 1:
        return None
    return center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2


def _range(values):
    return float(np.min(values)), float(np.max(values))


def _scale(values, low, high) -> np.ndarray:
    if high <= low:
        return np.full(values.shape, 128, dtype=np.uint8)  # a flat image: mid grey
    scaled = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
