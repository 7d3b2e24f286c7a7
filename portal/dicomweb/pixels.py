"""Pixel data of a stored instance, a frame at a time: where the Pixel Data
value starts in the file, one frame's bytes as stored, one frame decoded,
one frame rendered.

Bounded work, as for the previews (docs/previews.md):
1. the header is read without the pixel data (`stop_before_pixels` leaves
   the file at the Pixel Data element, whose 8 or 12 header bytes we read);
2. a native frame is `frame size` bytes at `value offset + index × frame
   size`; an encapsulated frame is found through the offset tables by
   pydicom's `get_frame` reading the open file, never the whole value;
3. a frame is decoded only when its decoded size is within the DICOM server
   setting "largest decoded pixel data" (`dicomnodes.scp.sending`), and
   rendered only when its pixel count is within the HTTP setting "largest
   previewed frame";
4. a deflated file cannot be read at an offset: it is read whole, only when
   all its frames decoded fit the budget.
"""

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.pixels import pixel_array
from pydicom.uid import UID

from dicomnodes.scp.sending import decoded_size
from portal.dicomweb.media import NATIVE
from portal.previews import to_image

PIXEL_DATA = 0x7FE00010
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}


class PixelError(Exception):
    """The frame cannot be given (no pixel data, no such frame, a codec error)."""


class TooLarge(PixelError):
    """Decoding or rendering it would exceed a budget: nothing was decoded."""


@dataclass
class StoredPixels:
    """An instance's header and where its Pixel Data value is in the file."""

    path: Path
    header: pydicom.Dataset
    syntax: UID
    offset: int | None = None  # of the value; None: no Pixel Data (or deflated)
    length: int | None = None  # None: undefined (encapsulated)
    vr: str = "OW"

    @property
    def frame_count(self):
        return int(self.header.get("NumberOfFrames", 1) or 1)

    @property
    def encapsulated(self):
        return self.length is None

    def frame_bytes(self):
        """Bytes of one native frame (Bits Allocated of 8 or more, or
        byte-aligned 1-bit frames)."""
        h = self.header
        bits = int(h.get("BitsAllocated", 16)) * int(h.Rows) * int(h.Columns) * int(h.get("SamplesPerPixel", 1) or 1)
        if bits % 8:
            raise PixelError("1-bit frames that do not end on a byte boundary cannot be read one by one")
        return bits // 8


def locate(path) -> StoredPixels:
    """The header of the file at `path` and its Pixel Data's position."""
    with open(path, "rb") as f:
        header = pydicom.dcmread(f, stop_before_pixels=True)
        syntax = UID(header.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
        found = StoredPixels(Path(path), header, syntax)
        if syntax.is_deflated:
            return found  # `f` is not where the inflated stream is
        head = f.read(8)
        if len(head) < 8:
            return found
        order = "<" if syntax.is_little_endian else ">"
        group, element = struct.unpack(order + "HH", head[:4])
        if (group << 16 | element) != PIXEL_DATA:
            return found
        if syntax.is_implicit_VR:
            (length,) = struct.unpack(order + "L", head[4:8])
            found.vr = "OB" if syntax.is_encapsulated or int(header.get("BitsAllocated", 16)) <= 8 else "OW"
        elif head[4:6] in _LONG_VRS:
            (length,) = struct.unpack(order + "L", f.read(4))
            found.vr = head[4:6].decode()
        else:
            (length,) = struct.unpack(order + "H", head[6:8])
            found.vr = head[4:6].decode()
        found.offset = f.tell()
        found.length = None if length == 0xFFFFFFFF else length
    return found


def stored_frame(pixels: StoredPixels, index: int) -> bytes:
    """Frame `index` (0-based) as stored: native bytes, or the encapsulated
    frame's fragments joined."""
    _check_index(pixels, index)
    with open(pixels.path, "rb") as f:
        f.seek(pixels.offset)
        if not pixels.encapsulated:
            size = pixels.frame_bytes()
            f.seek(pixels.offset + index * size)
            data = f.read(size)
            if len(data) < size:
                raise PixelError("the pixel data is shorter than its frames")
            return data
        h = pixels.header
        extended = None
        if "ExtendedOffsetTable" in h and "ExtendedOffsetTableLengths" in h:
            extended = (h.ExtendedOffsetTable, h.ExtendedOffsetTableLengths)
        try:
            return get_frame(f, index, extended_offsets=extended, number_of_frames=pixels.frame_count)
        except Exception as exc:  # broken offset tables or items
            raise PixelError(f"cannot read frame {index + 1}: {exc}") from exc


def decoded_frame(pixels: StoredPixels, index: int, *, max_decoded_bytes) -> bytes:
    """Frame `index` decoded to little endian bytes (colour as RGB, as
    `Dataset.decompress()` gives it), within the decode budget."""
    if pixels.offset is not None and not pixels.encapsulated and pixels.syntax in NATIVE:
        return stored_frame(pixels, index)
    return _little_endian(frame_array(pixels, index, max_decoded_bytes=max_decoded_bytes))


def _little_endian(array):
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def frame_array(pixels: StoredPixels, index: int, *, max_decoded_bytes):
    """Frame `index` as a numpy array, decoding that frame only."""
    _check_index(pixels, index)
    frame = decoded_size(pixels.header) // pixels.frame_count
    if frame > max_decoded_bytes:
        raise TooLarge(f"a frame of {frame // 2**20} MB is above the decoding limit")
    try:
        if pixels.syntax.is_deflated:
            if decoded_size(pixels.header) > max_decoded_bytes:
                raise TooLarge("a deflated image is read whole, and this one is above the decoding limit")
            return pixel_array(pydicom.dcmread(pixels.path), index=index)
        return pixel_array(str(pixels.path), index=index)
    except PixelError:
        raise
    except Exception as exc:  # codecs raise many kinds of errors
        raise PixelError(f"cannot decode frame {index + 1}: {exc}") from exc


def _check_index(pixels, index):
    if pixels.offset is None and not pixels.syntax.is_deflated:
        raise PixelError("the instance has no pixel data")
    if not 0 <= index < pixels.frame_count:
        raise PixelError(f"no frame {index + 1}: the instance has {pixels.frame_count}")


@dataclass(frozen=True)
class Rendering:
    """How to render: the output format, a window, the largest size."""

    image_format: str = "JPEG"  # or "PNG"
    window: tuple | None = None  # (center, width)
    size: tuple | None = None  # (rows, columns): fit within
    quality: int = 90


def render(pixels: StoredPixels, index: int, *, how: Rendering, max_pixels, max_decoded_bytes) -> bytes:
    """Frame `index` windowed as the previews are (portal/previews.py), as
    JPEG or PNG bytes; TooLarge above the preview budget."""
    h = pixels.header
    try:
        count = int(h.Rows) * int(h.Columns) * int(h.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise PixelError("the instance has no image") from exc
    if count > max_pixels:
        raise TooLarge(f"a frame of {count / 1e6:g} megapixels is above the rendering limit of {max_pixels / 1e6:g}")
    frame = frame_array(pixels, index, max_decoded_bytes=max_decoded_bytes)
    header = h
    if how.window:
        header = pydicom.Dataset(h)  # a shallow copy: the window is this rendering's
        header.WindowCenter, header.WindowWidth = how.window
    image = to_image(header, frame)
    if how.size:
        rows, columns = how.size
        image.thumbnail((columns or image.width, rows or image.height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if how.image_format == "PNG":
        image.save(out, format="PNG")
    else:
        image.save(out, format="JPEG", quality=how.quality)
    return out.getvalue()
