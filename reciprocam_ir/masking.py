"""Eq. 5: the spatially masked copies of a feature map that ``g`` scores."""

from __future__ import annotations

from numbers import Real

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


MASK_KINDS = ("onehot", "gaussian", "drop", "window")
DEFAULT_MASK = "onehot"
"""The mask of ``ReciproCAM``, ``reciprocam explain`` and the exported explain graph when none
is asked for: the paper's map, what other ReciproCAM tools compute (docs/evaluation.md says
when to choose ``window`` instead)."""
REMOVING_MASKS = ("drop",)
"""Mask kinds that remove a window rather than keep one: a low score marks a salient position."""
SOFTMAX_MASKS = ("window",)
"""Mask kinds defined with softmax scores: their masked maps are scored by probabilities
unless logits are asked for explicitly."""
DEFAULT_MASK_SIGMA = float(1.0 / np.sqrt(2.0 * np.log(2.0)))
"""σ (in feature cells) whose 3×3 kernel is the authors' [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16."""
DEFAULT_DROP_SIGMA = 1.5
"""σ (in feature cells) of the removed window of ``drop`` masks: the best ADCC among the widths
tried on the selection half of ``scripts/evaluate.py`` (docs/evaluation.md)."""
DEFAULT_WINDOW_SIGMA = 0.85
"""σ (in feature cells) of the renormalised ``window``: held up on held-out images (issue 17)."""
DEFAULT_WINDOW_STRENGTH = 4.0
"""Strength s of the ``window``: the kept evidence is s/N of the whole map's (s = 1 with a
one-cell window is the paper's one-hot map under a GAP head)."""
MAX_MASK_SIGMA = 64.0
"""The widest σ accepted, in feature cells: wider than any feature map's side, where every
window already covers the whole map (and the kernel, (4σ + 1)², stays small)."""
MAX_MASK_STRENGTH = 1e6
"""The largest window strength accepted (s = N already scores each window as if it filled the
map; far larger values only push the softmax to one-hot)."""


def check_sigma(sigma: float) -> None:
    """Refuse a σ that is not a number of feature cells in (0, MAX_MASK_SIGMA]."""
    if isinstance(sigma, bool) or not isinstance(sigma, Real) \
            or not 0 < sigma <= MAX_MASK_SIGMA:
        raise ValueError(f"mask_sigma must be a number of feature cells in "
                         f"(0, {MAX_MASK_SIGMA:g}], got {sigma!r}")


def check_strength(strength: float) -> None:
    """Refuse a window strength that is not a number in (0, MAX_MASK_STRENGTH]."""
    if isinstance(strength, bool) or not isinstance(strength, Real) \
            or not 0 < strength <= MAX_MASK_STRENGTH:
        raise ValueError(f"mask_strength must be a number in (0, {MAX_MASK_STRENGTH:g}], "
                         f"got {strength!r}")


def default_sigma(kind: str) -> float:
    """The σ a mask kind uses when none is given."""
    return {"drop": DEFAULT_DROP_SIGMA, "window": DEFAULT_WINDOW_SIGMA}.get(kind,
                                                                          DEFAULT_MASK_SIGMA)


def default_scores(kind: str) -> str:
    """How a mask kind's masked maps are scored when no ``scores`` is given."""
    return "softmax" if kind in SOFTMAX_MASKS else "logits"


def gaussian_kernel(sigma: float = DEFAULT_MASK_SIGMA) -> np.ndarray:
    """(2r+1)² kernel exp(−d²/2σ²) normalised to sum 1, truncated at r = max(1, ⌊2σ⌋) cells."""
    check_sigma(sigma)
    r = max(1, int(np.floor(2.0 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2.0 * sigma**2))
    return k / k.sum()


def _placed(window: np.ndarray, h: int, w: int, background: float = 0.0) -> np.ndarray:
    """(N, h, w) float32: ``window`` centred on every position n, cut off at the map's border,
    ``background`` elsewhere. Allocates the N² result only (no padded copy)."""
    r = window.shape[0] // 2
    placed = np.full((h * w, h, w), background, dtype=np.float32)
    for n in range(h * w):
        i, j = divmod(n, w)
        top, bottom = max(0, i - r), min(h, i + r + 1)
        left, right = max(0, j - r), min(w, j + r + 1)
        placed[n, top:bottom, left:right] = window[top - i + r : bottom - i + r,
                                                   left - j + r : right - j + r]
    return placed


def renormalised_window(h: int, w: int, sigma: float = DEFAULT_WINDOW_SIGMA,
                        strength: float = DEFAULT_WINDOW_STRENGTH) -> np.ndarray:
    """(N, h, w) float32: s·w_n, w_n(m) ∝ exp(−d(n, m)²/2σ²) over the whole grid (d in cells)
    normalised to sum 1, so a border position keeps as much evidence as an inner one.

    The Gaussian is separable and so is its normalisation: w_n is the outer product of two
    1-D windows, each normalised over its axis; only the N² result is allocated.
    """
    check_sigma(sigma)
    check_strength(strength)

    def axis(size: int) -> np.ndarray:
        t = np.arange(size, dtype=np.float64)
        g = np.exp(-((t[:, None] - t[None, :]) ** 2) / (2.0 * sigma**2))
        return (g / g.sum(axis=1, keepdims=True)).astype(np.float32)

    rows, cols = axis(h), axis(w)
    masks = rows[:, None, :, None] * cols[None, :, None, :]
    masks *= np.float32(strength)
    return masks.reshape(h * w, h, w)


def spatial_masks(h: int, w: int, kind: str = "onehot", sigma: float | None = None,
                  strength: float | None = None) -> np.ndarray:
    """The N = h·w spatial masks M_n, shape (N, h, w) float32.

    ``onehot`` (Eq. 5): M_n is 1 at position n, 0 elsewhere. ``gaussian`` (the authors'
    spread variant): M_n is :func:`gaussian_kernel` centred on n, cut off at the map's border
    (not renormalised there). ``drop``: M_n = 1 − the same Gaussian scaled to peak 1, i.e. the
    map with a soft window around n removed (a position is salient when removing it lowers
    the score). ``window``: :func:`renormalised_window` at ``strength`` (default
    :data:`DEFAULT_WINDOW_STRENGTH`; no other kind has one). ``sigma`` defaults to
    :func:`default_sigma` of the kind.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"mask must be one of {MASK_KINDS}, got {kind!r}")
    if strength is not None and kind != "window":
        raise ValueError(f"mask_strength applies to the window mask, not to the {kind} mask")
    sigma = default_sigma(kind) if sigma is None else sigma
    if kind == "window":
        return renormalised_window(h, w, sigma, DEFAULT_WINDOW_STRENGTH if strength is None
                                   else strength)
    if kind == "onehot":
        return np.eye(h * w, dtype=np.float32).reshape(h * w, h, w)
    k = gaussian_kernel(sigma)
    if kind == "gaussian":
        return _placed(k, h, w)
    return _placed(1.0 - k / k.max(), h, w, background=1.0)


def weighted_masked_batch(feature: np.ndarray, masks: np.ndarray, start: int = 0,
                          stop: int | None = None) -> np.ndarray:
    """Masked maps F ⊙ M_n for n in ``start..stop``: (n, C, h, w) from (C, h, w), (N, h, w)."""
    stop = len(masks) if stop is None else stop
    return (feature[None] * masks[start:stop, None]).astype(np.float32)


def weighted_pooled_masked(feature: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """GAP of every F ⊙ M_n, exactly: row n is Σ_m F[:, m]·M_n[m] / (h·w), shape (N, C)."""
    c, h, w = feature.shape
    flat = np.asarray(masks, np.float32).reshape(len(masks), h * w)
    return np.ascontiguousarray(flat @ feature.reshape(c, h * w).T.astype(np.float32)
                                / np.float32(h * w), dtype=np.float32)


def pooling_matrix(n: int, masks: np.ndarray | None = None) -> np.ndarray:
    """(N + 1, N) float32 A such that A · rows(F), rows(F) = F as (N, C), stacks the global
    average of F (row 0) on the exact GAP of every masked map (row n + 1: M_n / N, one-hot
    when ``masks`` is None) — :func:`pooled_masked` / :func:`weighted_pooled_masked` with the
    unmasked row first, as one matrix that the backends' fused graphs embed."""
    return mask_rows(n, masks) / np.float32(n)


def mask_rows(n: int, masks: np.ndarray | None = None) -> np.ndarray:
    """(N + 1, N) float32 weights of the N positions: all ones (the unmasked input), then
    mask n (one-hot when ``masks`` is None): what a token artifact's tail takes as ``masks``."""
    rows = np.ones((n + 1, n), np.float32)
    rows[1:] = np.eye(n, dtype=np.float32) if masks is None else \
        np.asarray(masks, np.float32).reshape(n, n)
    return rows
