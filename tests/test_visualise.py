"""Upsampling onto the crop the network saw, colouring, overlay."""

from __future__ import annotations

import cv2
import numpy as np

from reciprocam_ir.visualise import colorize, overlay, upsample, write_png


def test_upsample_whole_image_equals_cv2_resize():
    m = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    full = upsample(m, (0.0, 0.0, 70.0, 140.0), (70, 140))
    np.testing.assert_allclose(full, cv2.resize(m, (140, 70), interpolation=cv2.INTER_LINEAR),
                               atol=1e-5)


def test_upsample_onto_a_centre_crop_is_zero_outside():
    m = np.ones((7, 7), np.float32)
    full = upsample(m, (0.0, 50.0, 100.0, 150.0), (100, 200))
    assert full[:, :49].max() == 0 and full[:, 151:].max() == 0
    assert full[:, 51:149].min() == 1


def test_colorize_overlay_and_png(tmp_path):
    m = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    heat = colorize(m)
    assert heat.dtype == np.uint8 and heat[0, 0, 2] > heat[0, 0, 0]  # low = blue
    assert heat[-1, -1, 0] > heat[-1, -1, 2]  # high = red
    rgb = np.full((10, 10, 3), 100, np.uint8)
    out = write_png(tmp_path / "o.png", overlay(rgb, m))
    assert cv2.imread(str(out)).shape == (10, 10, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]
