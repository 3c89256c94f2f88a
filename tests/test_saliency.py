"""Eq. 6: per-class min–max normalisation."""

from __future__ import annotations

import numpy as np

from reciprocam_ir.saliency import normalise, softmax


def test_normalise_per_class():
    scores = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    maps = normalise(scores)
    assert maps.shape == (2, 3) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0], [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(maps[1], [0.0, 0.0, 0.0])  # constant class: zeros, no NaN


def test_softmax_rows_sum_to_one_and_are_stable():
    probs = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(probs, [[0.5, 0.5], [0.25, 0.75]])
