"""Series previews: one frame of the middle instance rendered as a small PNG, cached.

Windowing follows the dataset: the rescale (modality LUT) first, then the
first Window Center / Window Width value pair; without a window, the pixel
range (min to max) of the image.  MONOCHROME1 is inverted; colour images
(RGB, or YBR which pydicom converts) are scaled to 8 bits as they are.

Bounded work (a preview is asked by anyone holding a link):
1. the header alone says the frame's size (Rows × Columns × Samples per
   Pixel); above the HTTP setting "largest previewed frame" nothing is
   decoded (not cached: raising the setting takes effect at once);
2. only the middle frame is read and decoded (pydicom 3 `pixel_array(path,
   index=n)`: for native data it reads that frame's bytes at their offset,
   for encapsulated data that frame's fragments), never the whole pixel data;
3. windowing works on float32 in place, then 8 bits: about 7 bytes per
   pixel of the frame (2 decoded, 4 float, 1 grey), whatever the frame count;
4. a failure is cached too (`<hash>.failed`, holding the reason): a broken
   instance is decoded once, not at every request of the page.

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
from pydicom.pixels import pixel_array
from pydicom.uid import UID

logger = logging.getLogger(__name__)

PREVIEW_SIZE = 256  # longest side, pixels
DEFAULT_MAX_PIXELS = 32_000_000  # HttpSettings.preview_max_megapixels' default


class NoPreview(Exception):
    """The instance has no image we can render (no pixels, unknown codec)."""


class OverBudget(NoPreview):
    """The frame is larger than the preview budget: not decoded."""


def cache_path(sop_instance_uid: str) -> Path:
    digest = hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()
    return Path(settings.PACS_DATA_DIR) / "cache" / "previews" / digest[:2] / f"{digest}.png"


def failure_path(sop_instance_uid: str) -> Path:
    """Where a failed rendering is remembered (the reason, as text)."""
    return cache_path(sop_instance_uid).with_suffix(".failed")


def middle_instance(series):
    instances = list(series.instances.order_by("instance_number", "sop_instance_uid"))
    return instances[len(instances) // 2] if instances else None


def series_preview(series, *, max_pixels=DEFAULT_MAX_PIXELS) -> Path:
    """The cached preview of `series` (rendered on first use); NoPreview
    when there is none (a cached failure raises it without decoding)."""
    instance = middle_instance(series)
    if instance is None:
        raise NoPreview("the series has no instances")
    path = cache_path(instance.sop_instance_uid)
    if path.exists():
        return path
    failed = failure_path(instance.sop_instance_uid)
    if failed.exists():
        raise NoPreview(f"{failed.read_text(errors='replace')} (remembered)")
    try:
        png = render_png(instance.path, max_pixels=max_pixels)
    except OverBudget:
        raise
    except NoPreview as exc:
        _write_atomically(failed, str(exc).encode())
        raise
    _write_atomically(path, png)
    return path


def _write_atomically(path: Path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # readers never see half a file


def render_png(dicom_path, *, max_pixels=DEFAULT_MAX_PIXELS) -> bytes:
    ds, frame = read_middle_frame(dicom_path, max_pixels=max_pixels)
    image = to_image(ds, frame)
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def read_middle_frame(dicom_path, *, max_pixels):
    """(header dataset, the middle frame as an array), decoding nothing when
    the frame is above `max_pixels`."""
    try:
        ds = pydicom.dcmread(dicom_path, stop_before_pixels=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as exc:  # unreadable header, Rows missing or not a number
        raise NoPreview(f"no image header: {exc}") from exc
    if rows * columns * samples > max_pixels:
        raise OverBudget(
            f"a frame of {rows} x {columns} x {samples} pixels is above the preview limit of "
            f"{max_pixels / 1e6:g} megapixels (HTTP settings: largest previewed frame)"
        )
    index = frames // 2
    try:
        if UID(ds.file_meta.get("TransferSyntaxUID", "")).is_deflated:
            # pydicom cannot seek in a deflated stream: read it whole (its
            # inflated size was bounded when it was stored).
            if rows * columns * samples * frames > max_pixels:
                raise OverBudget(f"a deflated image of {frames} frames is above the preview limit")
            frame = pixel_array(pydicom.dcmread(dicom_path), index=index)
        else:
            frame = pixel_array(str(dicom_path), index=index)
    except NoPreview:
        raise
    except AttributeError as exc:
        raise NoPreview("no pixel data") from exc
    except Exception as exc:  # codecs raise many kinds of errors
        raise NoPreview(f"cannot decode the pixel data: {exc}") from exc
    return ds, frame


def to_image(ds, frame: np.ndarray) -> Image.Image:
    """One frame (rows × columns, or × 3 samples) of `ds` as an 8-bit image."""
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    values = frame.astype(np.float32)  # one copy, then in place
    if samples == 3:
        return Image.fromarray(_scale(values, *_range(values)), mode="RGB")
    slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    if slope != 1.0:
        values *= slope
    if intercept:
        values += intercept
    low, high = _window(ds) or _range(values)
    gray = _scale(values, low, high)
    if str(getattr(ds, "PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        np.subtract(255, gray, out=gray)
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
    """`values` (float32, overwritten) from low..high to 0..255 as uint8."""
    if high <= low:
        return np.full(values.shape, 128, dtype=np.uint8)  # a flat image: mid grey
    values -= low
    values *= 255.0 / (high - low)
    np.clip(values, 0, 255, out=values)
    np.rint(values, out=values)
    return values.astype(np.uint8)
