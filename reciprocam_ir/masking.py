"""Eq. 5: the spatially masked copies of a feature map that ``g`` scores."""

from __future__ import annotations

import numpy as np


def masked_batch(feature: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Copies ``start..stop`` of the N = h·w masked maps of ``feature`` (C, h, w).

    Copy n keeps spatial position n (all channels) and is zero elsewhere.
    """
    c, h, w = feature.shape
    stop = h * w if stop is None else stop
    positions = np.arange(start, stop)
    batch = np.zeros((len(positions), c, h * w), dtype=np.float32)
    batch[np.arange(len(positions)), :, positions] = feature.reshape(c, h * w)[:, positions].T
    return batch.reshape(len(positions), c, h, w)


def pooled_masked(feature: np.ndarray) -> np.ndarray:
    """Global average pool of every masked map, exactly: row n is F[:, n] / (h·w), shape (N, C)."""
    c, h, w = feature.shape
    return np.ascontiguousarray(feature.reshape(c, h * w).T, dtype=np.float32) / np.float32(h * w)
