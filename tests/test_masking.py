"""Eq. 5 masks and the exact pooled shortcut."""

from __future__ import annotations

import numpy as np

from reciprocam_ir.masking import masked_batch, pooled_masked


def test_masked_batch_keeps_one_position_per_copy():
    feature = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    batch = masked_batch(feature)
    assert batch.shape == (15, 4, 3, 5)
    for n in range(15):
        y, x = divmod(n, 5)
        expected = np.zeros_like(feature)
        expected[:, y, x] = feature[:, y, x]
        np.testing.assert_array_equal(batch[n], expected)
    np.testing.assert_array_equal(masked_batch(feature, 4, 9), batch[4:9])


def test_pooled_masked_is_the_mean_of_each_masked_map():
    feature = np.random.default_rng(1).standard_normal((6, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(pooled_masked(feature), masked_batch(feature).mean(axis=(2, 3)),
                               rtol=1e-6)
