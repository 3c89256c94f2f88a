"""Maps an engine's reduced precision has flattened into a few levels: found and said.

At bf16 (OpenVINO's default on CPUs that have it) a score keeps 8 significant bits. When
the N masked scores of a class differ by less than a few of those steps, they round to a
few distinct values and the min-max map (Eq. 6) shows the rounding, not the model: a
random-weight DeiT-Ti's class-token scores span 7e-4 around 0.9, which bf16 rounds to 2
values over its 196 cells (max map difference to f32: 1.0). Pretrained EfficientNet-Lite0
keeps all 49 of its 49 (docs/performance.md, ``scripts/precision_levels.py``).
"""

from __future__ import annotations

import warnings

import numpy as np

REDUCED_PRECISIONS = ("bf16", "f16")
MIN_LEVELS = 32
"""Distinct values a map of many cells should keep; a map of N cells needs min(this, N/2)."""


class PrecisionWarning(UserWarning):
    """Maps whose masked scores the engine's precision rounded to too few distinct values."""


def map_levels(maps: np.ndarray) -> np.ndarray:
    """Distinct values of each of K maps (K, N)."""
    return np.array([len(np.unique(m)) for m in maps.reshape(len(maps), -1)], np.int64)


def coarse(maps: np.ndarray) -> np.ndarray:
    """Which of K maps (K, N) have fewer than min(MIN_LEVELS, N/2) distinct values.

    An all-zero map (a class whose scores do not vary at all) counts as coarse too: at a
    reduced precision that is what a span below one rounding step gives.
    """
    return _coarse(map_levels(maps), maps.reshape(len(maps), -1).shape[1])


def _coarse(levels: np.ndarray, cells: int) -> np.ndarray:
    return levels < min(MIN_LEVELS, cells / 2)


def warn_if_coarse(name: str, classes: np.ndarray, maps: np.ndarray, precision: str) -> bool:
    """Warn (:class:`PrecisionWarning`) when a map computed at ``precision`` is coarse.

    Maps from f32 engines are never flagged: there a few levels are the model's own.
    Returns whether it warned.
    """
    if precision not in REDUCED_PRECISIONS:
        return False
    levels, n = map_levels(maps), maps[0].size
    flat = _coarse(levels, n)
    if not flat.any():
        return False
    k = int(np.argmax(flat))
    warnings.warn(
        f"{name}: the map of class {int(classes[k])} takes {levels[k]} distinct value(s) over "
        f"{n} cells: at {precision} the masked scores differ by less than its rounding; "
        f"explain with precision='f32' (--precision f32)", PrecisionWarning, stacklevel=3)
    return True
