"""Series previews (portal/previews.py): windowing, inversion, colour, cache."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from portal.previews import cache_path, render_png, to_image
from tests.support.dicomdata import BUNDLED, fresh_copy


def gray(**elements):
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


RAMP = np.array([[0, 1000, 2000, 3000]], dtype=np.uint16)


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


def test_the_middle_frame_of_a_multi_frame_image_is_shown():
    frames = np.stack([np.zeros((1, 4), np.uint16), RAMP, np.full((1, 4), 3000, np.uint16)])
    assert list(np.asarray(to_image(gray(NumberOfFrames=3), frames))[0]) == [0, 85, 170, 255]


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
    from portal.previews import NoPreview

    ds = pydicom.dcmread(BUNDLED / "CT_small.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(NoPreview):
        render_png(tmp_path / "nopixels.dcm")
