"""Series previews (portal/previews.py): windowing, inversion, colour, cache."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from portal.models import HttpSettings
from portal.previews import (
    NoPreview,
    OverBudget,
    cache_path,
    failure_path,
    read_middle_frame,
    render_png,
    series_preview,
    to_image,
)
from portal.tokens import create_token
from tests.support.archive import archive_files
from tests.support.dicomdata import BUNDLED, fresh_copy
from tests.support.multiframe import multiframe_header, rle_frame, write_native, write_rle


def gray(**elements):
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


RAMP = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)
GRADIENT = np.repeat(np.arange(64, dtype=np.uint16)[:, None] * 50, 64, axis=1)  # 64 x 64, rows 0..3150


def test_the_window_center_and_width_of_the_dataset_are_applied():
    # Rescale: -1024, -24, 976, 1976; window 40/400 (PS3.3 C.11.2.1.2): -160..239.
    ds = gray(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    assert list(np.asarray(to_image(ds, RAMP))[0]) == [0, 87, 255, 255]


def test_the_first_of_several_windows_is_used():
    ds = gray(WindowCenter=[1500, 40], WindowWidth=[3001, 10])
    assert list(np.asarray(to_image(ds, RAMP))[0]) == [0, 85, 170, 255]


def test_without_a_window_the_pixel_range_is_used():
    assert list(np.asarray(to_image(gray(), RAMP))[0]) == [0, 85, 170, 255]


def test_monochrome1_is_inverted():
    ds = gray(PhotometricInterpretation="MONOCHROME1")
    assert list(np.asarray(to_image(ds, RAMP))[0]) == [255, 170, 85, 0]


def test_the_middle_frame_of_a_multi_frame_image_is_shown(tmp_path):
    zeros, ramp = np.zeros((1, 4), np.uint16).tobytes(), RAMP.tobytes()
    path = write_native(tmp_path / "mf.dcm", multiframe_header(rows=1, columns=4, frames=3), [zeros, ramp, zeros])
    ds, frame = read_middle_frame(path, max_pixels=100)
    assert list(np.asarray(to_image(ds, frame))[0]) == [0, 85, 170, 255]


def test_only_the_middle_frame_of_a_compressed_image_is_decoded(tmp_path):
    # Frames 1 and 3 are not RLE at all: decoding them would fail.
    middle = rle_frame(GRADIENT)
    path = write_rle(
        tmp_path / "rle.dcm", multiframe_header(rows=64, columns=64, frames=3), [b"junk" * 4, middle, b"x" * 16]
    )
    image = Image.open(io.BytesIO(render_png(path)))
    assert image.getextrema() == (0, 255)


def test_a_flat_image_is_mid_grey():
    assert list(np.asarray(to_image(gray(), np.zeros((2, 2), np.uint16))).ravel()) == [128] * 4


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_rle_2frame.dcm"])
def test_a_colour_image_stays_in_colour(name):
    image = Image.open(io.BytesIO(render_png(BUNDLED / name)))
    assert image.mode == "RGB" and max(image.size) <= 256


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_grey_images_render(name, tmp_path):
    image = Image.open(io.BytesIO(render_png(fresh_copy(name, tmp_path / name))))
    assert image.mode == "L" and image.getextrema() != (0, 0)


def test_the_cache_file_is_named_by_a_hash_not_by_the_uid(settings, tmp_path):
    settings.PACS_DATA_DIR = tmp_path
    path = cache_path("1.2.3/../../evil")
    assert path.is_relative_to(tmp_path / "cache" / "previews") and ".." not in path.parts
    assert len(path.stem) == 64


def test_a_dataset_without_pixels_has_no_preview(tmp_path):
    ds = pydicom.dcmread(BUNDLED / "CT_small.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(NoPreview):
        render_png(tmp_path / "nopixels.dcm")


# --- bounds: the pixel budget and the failure cache -----------------------------------------------


def a_huge_frame(path):
    """A header announcing a 20,000 x 20,000 frame, with a few bytes of pixels."""
    return write_native(path, multiframe_header(rows=20000, columns=20000, frames=1, bits=8), [b"\0" * 16])


def test_a_frame_above_the_pixel_budget_is_refused_before_decoding(tmp_path):
    with pytest.raises(OverBudget, match="20000 x 20000 x 1 pixels is above the preview limit of 32 megapixels"):
        render_png(a_huge_frame(tmp_path / "huge.dcm"))


def test_a_refusal_over_budget_is_not_remembered(data_dir, db, tmp_path):
    (instance,) = archive_files([a_huge_frame(tmp_path / "huge.dcm")])
    with pytest.raises(OverBudget):
        series_preview(instance.series)
    assert not failure_path(instance.sop_instance_uid).exists()


def test_a_broken_instance_is_decoded_once(data_dir, db, tmp_path):
    broken = write_rle(tmp_path / "broken.dcm", multiframe_header(rows=64, columns=64, frames=1), [b"not RLE" * 3])
    (instance,) = archive_files([broken])
    with pytest.raises(NoPreview, match="cannot decode"):
        series_preview(instance.series)
    # Repaired behind our back: the remembered failure answers, the file is not read again.
    good = write_rle(
        tmp_path / "good.dcm",
        multiframe_header(rows=64, columns=64, frames=1),
        [rle_frame(GRADIENT)],
    )
    instance.path.write_bytes(good.read_bytes())
    with pytest.raises(NoPreview, match="remembered"):
        series_preview(instance.series)
    assert failure_path(instance.sop_instance_uid).exists() and not cache_path(instance.sop_instance_uid).exists()


def test_a_link_s_preview_over_the_budget_answers_a_clear_404(client, data_dir, db, tmp_path):
    row = HttpSettings.load()
    row.preview_max_megapixels = 1
    row.save()
    frame = np.zeros((1000, 1100), np.uint8).tobytes()
    path = write_native(tmp_path / "big.dcm", multiframe_header(rows=1000, columns=1100, frames=1, bits=8), [frame])
    (instance,) = archive_files([path])
    token = create_token(instance.series.study).clear
    response = client.get(f"/token/preview/{instance.series.pk}?{token}")
    assert response.status_code == 404
    assert response.content.decode() == "This image is too large for a preview."
