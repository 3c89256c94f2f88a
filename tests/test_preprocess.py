"""Preprocessing from the manifest, and image files of every common kind."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reciprocam_ir.preprocess import ImageError, Preprocessing, as_rgb, read_image


def test_direct_resize_scale_and_normalise():
    p = Preprocessing(size=(4, 6), resize="direct", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    rgb = np.zeros((8, 12, 3), np.uint8)
    rgb[..., 0] = 255
    x = p(rgb)
    assert x.shape == (1, 3, 4, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)
    np.testing.assert_allclose(x[0, 1:], -1.0)


def test_bgr_colour_order_swaps_channels():
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    p = Preprocessing(size=(4, 4), resize="direct", color="BGR", mean=(0, 0, 0), std=(1, 1, 1))
    x = p(rgb)
    assert x[0, 2].max() > 0.7 and x[0, 0].max() == 0


def test_shorter_side_crop_matches_torchvision_recipe():
    p = Preprocessing(size=(224, 224), resize="shorter_side_crop", resize_size=256)
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    resized = cv2.resize(rgb, (341, 256), interpolation=cv2.INTER_LINEAR)
    crop = resized[16:240, 58:282]
    expected = (crop / 255.0 - np.array(p.mean)) / np.array(p.std)
    np.testing.assert_allclose(p(rgb)[0].transpose(1, 2, 0), expected, atol=1e-5)
    y0, x0, y1, x1 = p.crop_box(300, 400)
    assert y0 == pytest.approx(18.75) and y1 == pytest.approx(281.25)
    assert x1 - x0 == pytest.approx(262.5)


def test_round_trip_through_manifest_dict():
    p = Preprocessing(size=(192, 192), resize="shorter_side_crop", resize_size=220,
                      mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), color="BGR")
    assert Preprocessing.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("kwargs, match", [
    ({"resize": "stretch"}, "resize"), ({"color": "HSV"}, "color"),
    ({"std": (1, 0, 1)}, "std"), ({"resize_size": 100}, "resize_size"),
])
def test_invalid_preprocessing(kwargs, match):
    args = {"size": (224, 224), "resize_size": 256, **kwargs}
    with pytest.raises(ValueError, match=match):
        Preprocessing(**args)


@pytest.fixture()
def rgb():
    return np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)


def test_reads_colour_grey_rgba_and_16_bit(tmp_path, rgb):
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)
    grey = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.dstack([grey] * 3))
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    cv2.imwrite(str(tmp_path / "w.png"), bgr.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(tmp_path / "w.png"), rgb)
    (tmp_path / "png_named.jpg").write_bytes((tmp_path / "c.png").read_bytes())
    np.testing.assert_array_equal(read_image(tmp_path / "png_named.jpg"), rgb)


def test_unreadable_files(tmp_path, rgb):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(ImageError, match="not a file"):
        read_image(tmp_path)
    cv2.imwrite(str(tmp_path / "big.png"), rgb)
    with pytest.raises(ImageError, match="pixel limit"):
        read_image(tmp_path / "big.png", max_pixels=100)


def test_header_with_absurd_size_is_refused_not_raised(tmp_path, rgb):
    """Found by the fuzz test: OpenCV raises (rather than returns None) on such headers."""
    data = bytearray(cv2.imencode(".bmp", rgb)[1].tobytes())
    data[18:22] = (2**24).to_bytes(4, "little")  # BMP width
    (tmp_path / "wide.bmp").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "wide.bmp")


def test_in_memory_arrays():
    assert as_rgb(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(ImageError, match="uint8"):
        as_rgb(np.zeros((5, 6, 3), np.float32))
    with pytest.raises(ImageError, match="numpy array"):
        as_rgb([[1, 2, 3]])
