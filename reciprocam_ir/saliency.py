"""Eq. 6–7: per-class min–max normalisation of the N masked scores into maps."""

from __future__ import annotations

import numpy as np

SCORE_KINDS = ("logits", "softmax")


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = scores - scores.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def normalise(scores: np.ndarray) -> np.ndarray:
    """(N, K) scores → (K, N) maps in [0, 1]; a class whose scores are all equal maps to 0.

    A class with a NaN score keeps NaN in its map, so the caller can refuse it.
    """
    scores = np.asarray(scores, dtype=np.float64).T
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    varies = span > 0
    return ((scores - low) / np.where(varies, span, 1.0) * varies).astype(np.float32)
