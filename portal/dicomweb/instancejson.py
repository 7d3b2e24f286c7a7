"""An instance's header in DICOM JSON (PS3.18 F.2) for WADO-RS metadata:
bulk data replaced by BulkDataURIs (F.2.6) to our `…/bulkdata/{tag}`.

The header is read without the pixel data (`pixels.locate`); top-level
binary values above `BULK_THRESHOLD` bytes and the Pixel Data become URIs.
Binary values inside sequences stay inline (the bulkdata resource names a
top-level tag; such values — icons, small LUTs — are small)."""

import logging

from pydicom.tag import Tag

from portal.dicomweb.pixels import PIXEL_DATA, StoredPixels

logger = logging.getLogger(__name__)

BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024  # bytes
AVAILABLE_TRANSFER_SYNTAX = "00083002"  # (0008,3002) UI Available Transfer Syntax UID


def instance_json(pixels: StoredPixels, bulkdata_uri) -> dict:
    """The DICOM JSON object of one instance; `bulkdata_uri(tag)` gives the
    URI of a top-level element's value."""
    out = {}
    for element in pixels.header:
        key = f"{element.tag:08X}"
        try:
            if element.VR in BULK_VRS and element.value is not None and len(element.value) > BULK_THRESHOLD:
                out[key] = {"vr": element.VR, "BulkDataURI": bulkdata_uri(key)}
            else:
                out[key] = element.to_json_dict(None, 2**62)
        except Exception as exc:  # an unreadable value: left out, as QIDO leaves it out
            logger.warning("DICOMweb metadata: element %s left out: %s", key, exc)
    out[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [str(pixels.syntax)]}
    if pixels.offset is not None or (pixels.syntax.is_deflated and "Rows" in pixels.header):
        out[f"{PIXEL_DATA:08X}"] = {"vr": pixels.vr, "BulkDataURI": bulkdata_uri(f"{PIXEL_DATA:08X}")}
    return dict(sorted(out.items()))


def parse_tag(text):
    """The tag of "7FE00010" (eight hex digits), or None."""
    if len(text) != 8:
        return None
    try:
        return Tag(int(text, 16))
    except ValueError:
        return None
