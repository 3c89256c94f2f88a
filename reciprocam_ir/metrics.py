"""Faithfulness metrics for saliency maps of any method (numpy only, no torch).

Every metric takes the model as a callable ``predict(inputs) -> probs``: ``inputs`` a batch
of **normalised** model inputs (B, 3, H, W) float32, ``probs`` the softmax probabilities
(B, num_classes). Maps are (h, w) arrays in [0, 1] at any resolution; they are upsampled
bilinearly to the input size (:func:`upsample`) before use, so maps of ReciproCAM (h×w of
the feature map) and of pytorch-grad-cam (already H×W) are scored by the same code.

ADCC follows Poppi et al., "Revisiting the evaluation of class activation mapping for
explainability" (CVPR-W 2021); deletion/insertion follow Petsiuk et al., RISE (BMVC 2018);
the pointing game follows Zhang et al., excitation backprop (ECCV 2016).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
"""(B, 3, H, W) normalised inputs → (B, num_classes) softmax probabilities."""
Explain = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(B, 3, H, W) normalised inputs, (B,) classes → (B, h, w) maps in [0, 1]."""

EPS = 1e-12


# --------------------------------------------------------------------------- helpers


def _interp_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of 1-D linear interpolation, half-pixel centres, edges clamped."""
    pos = np.clip((np.arange(dst) + 0.5) * src / dst - 0.5, 0.0, src - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, src - 1)
    frac = pos - lo
    m = np.zeros((dst, src))
    m[np.arange(dst), lo] += 1.0 - frac
    m[np.arange(dst), hi] += frac
    return m


def upsample(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) map to ``size`` (H, W).

    Same rule as ``cv2.resize(..., INTER_LINEAR)`` when enlarging and as torch's
    ``interpolate(mode='bilinear', align_corners=False)``: pixel centres at half-pixel
    offsets, border values clamped. A map already of ``size`` is returned as float64.
    """
    saliency = np.asarray(saliency, dtype=np.float64)
    if saliency.shape == tuple(size):
        return saliency
    rows = _interp_matrix(saliency.shape[0], size[0])
    cols = _interp_matrix(saliency.shape[1], size[1])
    return rows @ saliency @ cols.T


def explanation_map(inputs: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """E = x ⊙ L: the normalised input (3, H, W) times the map upsampled to H×W."""
    big = upsample(saliency, inputs.shape[-2:])
    return (inputs * big[None]).astype(np.float32)


def _safe_harmonic(values: Sequence[float]) -> float:
    """Harmonic mean; 0 when any value is ≤ 0 (the limit of the formula)."""
    values = np.asarray(values, dtype=np.float64)
    if np.any(values <= 0):
        return 0.0
    return float(len(values) / np.sum(1.0 / values))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; for a constant map: 1 if both maps are equal, else 0."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    if den <= EPS:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.clip((a * b).sum() / den, -1.0, 1.0))


# --------------------------------------------------------------------------- ADCC


def average_drop(y: np.ndarray | float, o: np.ndarray | float) -> np.ndarray:
    """max(0, Y − O) / Y per image; Y = p(c | x), O = p(c | E). 0 where Y = 0."""
    y = np.asarray(y, np.float64)
    o = np.asarray(o, np.float64)
    return np.where(y > 0, np.maximum(0.0, y - o) / np.where(y > 0, y, 1.0), 0.0)


def increase_in_confidence(y: np.ndarray | float, o: np.ndarray | float) -> np.ndarray:
    """1[O > Y] per image (as float, so its mean is the fraction of images)."""
    return (np.asarray(o, np.float64) > np.asarray(y, np.float64)).astype(np.float64)


def coherency(map_x: np.ndarray, map_e: np.ndarray, size: tuple[int, int] | None = None) -> float:
    """(Pearson(L(x), L(E)) + 1) / 2, both maps upsampled to ``size`` (default: the larger)."""
    if size is None:
        size = max(np.shape(map_x), np.shape(map_e))
    return (_pearson(upsample(map_x, size), upsample(map_e, size)) + 1.0) / 2.0


def complexity(saliency: np.ndarray, size: tuple[int, int] | None = None) -> float:
    """Mean of the map (L1 norm / number of pixels), upsampled to ``size`` when given."""
    return float(np.mean(upsample(saliency, size) if size else saliency))


def adcc(coherency_: float, complexity_: float, drop: float) -> float:
    """Harmonic mean of Coherency, 1 − Complexity and 1 − Average Drop (0 if any term ≤ 0)."""
    return _safe_harmonic([coherency_, 1.0 - complexity_, 1.0 - drop])


@dataclass
class ADCCResult:
    """Per-image terms (arrays of length B) and their summaries."""

    average_drop: np.ndarray
    increase: np.ndarray
    coherency: np.ndarray
    complexity: np.ndarray
    adcc: np.ndarray

    def means(self) -> dict[str, float]:
        """Averages over images, plus ``adcc_of_means``: ADCC of the averaged terms."""
        out = {k: float(np.mean(getattr(self, k)))
               for k in ("average_drop", "increase", "coherency", "complexity", "adcc")}
        out["adcc_of_means"] = adcc(out["coherency"], out["complexity"], out["average_drop"])
        return out


def adcc_scores(predict: Predict, inputs: np.ndarray, maps: Sequence[np.ndarray],
                targets: Sequence[int], explain: Explain) -> ADCCResult:
    """ADCC terms for B images.

    ``inputs`` (B, 3, H, W) normalised; ``maps[i]`` the method's map of class ``targets[i]``
    on image i; ``explain`` runs the same method on the explanation maps E (for Coherency).
    L is every map upsampled to H×W; E = x ⊙ L; Y, O the softmax probability of the class
    on x and on E. ADCC is computed per image, then averaged.
    """
    targets = np.asarray(targets, dtype=np.int64)
    size = inputs.shape[-2:]
    big = [upsample(m, size) for m in maps]
    e = np.stack([explanation_map(x, m) for x, m in zip(inputs, big, strict=True)])
    rows = np.arange(len(targets))
    y = predict(inputs)[rows, targets]
    o = predict(e)[rows, targets]
    maps_e = explain(e, targets)
    drop = average_drop(y, o)
    coh = np.array([coherency(a, b, size) for a, b in zip(big, maps_e, strict=True)])
    com = np.array([complexity(m) for m in big])
    score = np.array([adcc(c, k, d) for c, k, d in zip(coh, com, drop, strict=True)])
    return ADCCResult(drop, increase_in_confidence(y, o), coh, com, score)


# --------------------------------------------------------------------------- deletion / insertion


def gaussian_blur(inputs: np.ndarray, sigma: float = 5.0) -> np.ndarray:
    """Separable Gaussian blur of (..., H, W), kernel radius ⌈3σ⌉, borders reflected."""
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-t**2 / (2 * sigma**2))
    k /= k.sum()
    out = np.asarray(inputs, np.float64)
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return out.astype(np.float32)


def perturbation_curve(predict: Predict, inputs: np.ndarray, saliency: np.ndarray, target: int,
                       mode: str = "deletion", steps: int = 50, baseline: np.ndarray | None = None,
                       batch_size: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """The deletion or insertion curve of one image (RISE).

    Pixels of ``inputs`` (3, H, W) are ranked by the map upsampled to H×W, most salient
    first (ties by row-major pixel index, a stable sort). At step k = 0..``steps`` the first
    round(k·H·W/steps) ranked pixels (all channels) are changed:

    - deletion: they are replaced by ``baseline`` (default 0 in the normalised space, i.e.
      the dataset mean colour), starting from the image;
    - insertion: they are copied from the image into ``baseline`` (default the image blurred
      with a Gaussian of σ = 5 px), starting from the baseline.

    Returns (fractions of pixels changed, probability of ``target``), each of length steps+1.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    _, height, width = inputs.shape
    n = height * width
    order = np.argsort(-upsample(saliency, (height, width)).ravel(), kind="stable")
    if baseline is None:
        baseline = np.zeros_like(inputs) if mode == "deletion" else gaussian_blur(inputs)
    start, end = (inputs, baseline) if mode == "deletion" else (baseline, inputs)
    start = start.reshape(3, n)
    end = end.reshape(3, n)
    counts = np.round(np.arange(steps + 1) * n / steps).astype(int)
    probs = []
    for first in range(0, steps + 1, batch_size):
        batch = []
        for count in counts[first : first + batch_size]:
            frame = start.copy()
            frame[:, order[:count]] = end[:, order[:count]]
            batch.append(frame.reshape(3, height, width))
        probs.append(predict(np.stack(batch).astype(np.float32))[:, target])
    return counts / n, np.concatenate(probs)


def auc(fractions: np.ndarray, values: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule over the fraction axis [0, 1]."""
    f = np.asarray(fractions, np.float64)
    v = np.asarray(values, np.float64)
    return float(np.sum((f[1:] - f[:-1]) * (v[1:] + v[:-1]) / 2.0))


def deletion_auc(predict: Predict, inputs: np.ndarray, saliency: np.ndarray, target: int,
                 steps: int = 50, baseline: np.ndarray | None = None) -> float:
    """AUC of the deletion curve (lower is better); see :func:`perturbation_curve`."""
    return auc(*perturbation_curve(predict, inputs, saliency, target, "deletion", steps, baseline))


def insertion_auc(predict: Predict, inputs: np.ndarray, saliency: np.ndarray, target: int,
                  steps: int = 50, baseline: np.ndarray | None = None) -> float:
    """AUC of the insertion curve (higher is better); see :func:`perturbation_curve`."""
    return auc(*perturbation_curve(predict, inputs, saliency, target, "insertion", steps, baseline))


# --------------------------------------------------------------------------- pointing game


def pointing_game(saliency: np.ndarray, boxes: Sequence[tuple[float, float, float, float]],
                  size: tuple[int, int] | None = None, tolerance: float = 15.0) -> bool:
    """Hit when the map's maximum lies within ``tolerance`` px of a box (y0, x0, y1, x1).

    The map is upsampled to ``size`` (H, W) first when given; box coordinates are in that
    pixel grid (pixel (i, j) has centre (i + 0.5, j + 0.5)); the first maximum in row-major
    order is the point. Zhang et al. use a 15 px tolerance.
    """
    big = upsample(saliency, size) if size else np.asarray(saliency, np.float64)
    i, j = np.unravel_index(int(np.argmax(big)), big.shape)
    py, px = i + 0.5, j + 0.5
    for y0, x0, y1, x1 in boxes:
        dy = max(y0 - py, 0.0, py - y1)
        dx = max(x0 - px, 0.0, px - x1)
        if np.hypot(dy, dx) <= tolerance:
            return True
    return False


# --------------------------------------------------------------------------- detectors, per box


def box_region(box: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels whose centre lies in ``box`` (x1, y1, x2, y2)."""
    x1, y1, x2, y2 = box
    ys = np.arange(shape[0])[:, None] + 0.5
    xs = np.arange(shape[1])[None, :] + 0.5
    return (ys >= y1) & (ys <= y2) & (xs >= x1) & (xs <= x2)


def points_into(saliency: np.ndarray, region: np.ndarray) -> bool:
    """Pointing game of a map already at image size: its (first) maximum lies in ``region``
    (an (H, W) bool box or object mask)."""
    i, j = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return bool(region[i, j])


def energy_in(saliency: np.ndarray, region: np.ndarray) -> float:
    """Energy-based pointing game (Score-CAM): the share of the map's mass inside ``region``
    (0 for an all-zero map)."""
    total = float(np.sum(saliency))
    return float(np.sum(saliency[region])) / total if total > 0 else 0.0
