"""Metrics on hand-made maps and a hand-made model whose values are known in closed form."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from reciprocam_ir import metrics as M

H = W = 16


def region_model(inputs: np.ndarray) -> np.ndarray:
    """Two classes; p(class 1) = mean of channel 0 over the top-left 4×4 'object'."""
    a = np.clip(inputs[:, 0, :4, :4].mean(axis=(1, 2)), 0.0, 1.0)
    return np.stack([1.0 - a, a], axis=1)


def sigmoid_left_model(inputs: np.ndarray) -> np.ndarray:
    """Two classes with logits (0, s), s = mean of channel 0 over the left half."""
    s = inputs[:, 0, :, : inputs.shape[-1] // 2].mean(axis=(1, 2))
    p = 1.0 / (1.0 + np.exp(-s))
    return np.stack([1.0 - p, p], axis=1)


def object_map(inverted: bool = False) -> np.ndarray:
    m = np.zeros((H, W), np.float32)
    m[:4, :4] = 1.0
    return 1.0 - m if inverted else m


def test_upsample_matches_opencv_and_keeps_same_size():
    m = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    ours = M.upsample(m, (224, 224))
    ref = cv2.resize(m, (224, 224), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_array_equal(M.upsample(m, (7, 7)), m)
    assert M.upsample(m, (14, 21)).shape == (14, 21)


def test_average_drop_and_increase():
    np.testing.assert_allclose(M.average_drop(0.8, 0.6), 0.25)
    assert M.average_drop(0.8, 0.9) == 0.0
    assert M.average_drop(0.0, 0.5) == 0.0  # guarded, no division by zero
    np.testing.assert_array_equal(M.increase_in_confidence([0.5, 0.5, 0.5], [0.4, 0.5, 0.6]),
                                  [0.0, 0.0, 1.0])


def test_coherency_known_values():
    m = np.random.default_rng(1).random((7, 7))
    assert M.coherency(m, m) == pytest.approx(1.0)
    assert M.coherency(m, 1.0 - m) == pytest.approx(0.0)
    assert M.coherency(np.ones((7, 7)), np.ones((7, 7))) == 1.0  # constant and equal
    assert M.coherency(np.zeros((7, 7)), m) == 0.5  # constant vs varying: ρ taken as 0
    # maps at different resolutions are compared after upsampling to the larger
    assert M.coherency(m, M.upsample(m, (224, 224))) == pytest.approx(1.0)


def test_complexity_known_values():
    assert M.complexity(np.ones((7, 7))) == 1.0
    half = np.zeros((4, 4))
    half[:, :2] = 1.0
    assert M.complexity(half) == 0.5
    assert M.complexity(half, (8, 8)) == pytest.approx(0.5)


def test_adcc_harmonic_mean_and_guards():
    assert M.adcc(1.0, 0.0, 0.0) == 1.0
    assert M.adcc(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert M.adcc(1.0, 0.5, 0.0) == pytest.approx(3 / (1 + 2 + 1))
    assert M.adcc(0.0, 0.2, 0.1) == 0.0  # a zero term: 0, not a ZeroDivisionError
    assert M.adcc(0.9, 1.0, 0.1) == 0.0
    assert M.adcc(0.9, 0.2, 1.0) == 0.0


def test_adcc_scores_end_to_end():
    inputs = np.ones((2, 3, H, W), np.float32)
    left = np.zeros((H, W), np.float32)
    left[:, : W // 2] = 1.0
    maps = [left, 1.0 - left]

    def explain(e: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return np.stack(maps)  # the same maps again: Coherency 1

    r = M.adcc_scores(sigmoid_left_model, inputs, maps, [1, 1], explain)
    y = 1.0 / (1.0 + np.exp(-1.0))
    np.testing.assert_allclose(r.average_drop, [0.0, (y - 0.5) / y])
    np.testing.assert_array_equal(r.increase, [0.0, 0.0])
    np.testing.assert_allclose(r.coherency, [1.0, 1.0])
    np.testing.assert_allclose(r.complexity, [0.5, 0.5])
    expected = [3 / (1 + 2 + 1), 3 / (1 + 2 + 1 / (1 - (y - 0.5) / y))]
    np.testing.assert_allclose(r.adcc, expected)
    means = r.means()
    assert means["adcc"] == pytest.approx(np.mean(expected))
    assert means["adcc_of_means"] == pytest.approx(
        M.adcc(1.0, 0.5, float(np.mean(r.average_drop))))


def test_explanation_map_multiplies_the_normalised_input():
    x = np.full((3, 4, 4), -2.0, np.float32)
    m = np.zeros((4, 4))
    m[0, 0] = 1.0
    e = M.explanation_map(x, m)
    assert e[:, 0, 0].tolist() == [-2.0] * 3 and np.count_nonzero(e) == 3


def test_auc_trapezoid():
    assert M.auc([0.0, 0.5, 1.0], [1.0, 1.0, 0.0]) == pytest.approx(0.75)
    assert M.auc([0.0, 1.0], [0.3, 0.3]) == pytest.approx(0.3)


def test_deletion_and_insertion_known_curves():
    x = np.ones((3, H, W), np.float32)
    # 16 steps of 16 pixels; the object is 16 pixels, ranked first by the perfect map
    frac, curve = M.perturbation_curve(region_model, x, object_map(), 1, "deletion", steps=16)
    np.testing.assert_allclose(frac, np.arange(17) / 16)
    np.testing.assert_allclose(curve, [1.0] + [0.0] * 16)
    assert M.deletion_auc(region_model, x, object_map(), 1, steps=16) == pytest.approx(1 / 32)
    assert M.deletion_auc(region_model, x, object_map(True), 1, steps=16) == pytest.approx(
        31 / 32)
    zeros = np.zeros_like(x)
    assert M.insertion_auc(region_model, x, object_map(), 1, 16, zeros) == pytest.approx(31 / 32)
    assert M.insertion_auc(region_model, x, object_map(True), 1, 16, zeros) == pytest.approx(
        1 / 32)
    # a low-resolution map is upsampled first: a 4×4 map with the object cell hot is perfect
    small = np.zeros((4, 4))
    small[0, 0] = 1.0
    assert M.deletion_auc(region_model, x, small, 1, steps=16) == pytest.approx(1 / 32)
    with pytest.raises(ValueError):
        M.perturbation_curve(region_model, x, small, 1, "erase")


def test_insertion_default_baseline_is_a_blur():
    x = np.zeros((3, H, W), np.float32)
    x[0, :4, :4] = 1.0
    frac, curve = M.perturbation_curve(region_model, x, object_map(), 1, "insertion", steps=16)
    blurred = M.gaussian_blur(x)
    assert curve[0] == pytest.approx(region_model(blurred[None])[0, 1])
    assert 0.0 < curve[0] < 1.0 and curve[1] == pytest.approx(1.0)


def test_gaussian_blur_matches_opencv():
    img = np.random.default_rng(2).random((40, 50)).astype(np.float32)
    ours = M.gaussian_blur(img, sigma=2.0)
    ref = cv2.GaussianBlur(img, (13, 13), 2.0, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(M.gaussian_blur(np.full((3, 20, 20), 0.7)), 0.7, atol=1e-6)


def test_pointing_game():
    m = np.zeros((8, 8))
    m[2, 3] = 1.0  # point at (2.5, 3.5)
    assert M.pointing_game(m, [(0, 0, 4, 4)], tolerance=0)
    assert not M.pointing_game(m, [(4, 4, 8, 8)], tolerance=0)
    assert M.pointing_game(m, [(4, 4, 8, 8)], tolerance=1.6)  # 1.5 px away in y, 0.5 in x
    assert M.pointing_game(m, [(6, 6, 8, 8), (2, 3, 3, 4)], tolerance=0)  # any box
    assert M.pointing_game(m, [(0, 0, 112, 112)], size=(224, 224), tolerance=0)
    assert not M.pointing_game(m, [(0, 112, 224, 224)], size=(224, 224), tolerance=0)
