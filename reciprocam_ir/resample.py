"""Separable image resampling as torchvision computes it, for only the region that is kept.

``antialias=True`` is torchvision's (and PIL's) antialiased resize: when shrinking, the
filter widens with the scale so every input pixel contributes; taps falling outside the
image are dropped and the rest renormalised. ``antialias=False`` is plain interpolation
with edge pixels repeated, as ``cv2.resize`` and torch's non-antialiased modes do.
Working on an output window keeps a crop of a huge resize cheap (a 1×16000 strip resized
to 256 rows computes only the 224×224 it keeps).
"""

from __future__ import annotations

import numpy as np

INTERPOLATIONS = ("bilinear", "bicubic")
FEW_TAPS = 8
"""Up to this many taps an output is a weighted sum of gathered rows; beyond, block products."""
SMALL_PRODUCT = 1 << 18
"""Multiply-adds of one matrix product; OpenBLAS multithreads only above 4 × 65536."""


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


def _cubic(a: float):
    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
        return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))
    return kernel


# half-width of the kernel in input pixels at scale 1, and the kernel for each antialias mode
_KERNELS = {
    ("bilinear", True): (1, _triangle), ("bilinear", False): (1, _triangle),
    # torch's antialiased bicubic uses Keys' a = -0.5 (as PIL); plain bicubic a = -0.75 (as OpenCV)
    ("bicubic", True): (2, _cubic(-0.5)), ("bicubic", False): (2, _cubic(-0.75)),
}


def axis_taps(in_size: int, out_size: int, first: int, count: int, interpolation: str,
              antialias: bool, extent: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Input indices and weights, each (count, taps), of outputs ``first .. first+count-1``.

    The outputs belong to a resize of an axis of ``in_size`` pixels to ``out_size``
    (half-pixel centres, as ``align_corners=False``). Indices are clamped into the axis.
    ``extent``: the length in input pixels that the ``out_size`` outputs span, when it is
    not ``in_size`` (an image decoded at 1/4 scale spans a quarter of the full length,
    which its rounded-up size need not equal).
    """
    half, kernel = _KERNELS[(interpolation, antialias)]
    scale = (in_size if extent is None else extent) / out_size
    centres = scale * (np.arange(first, first + count, dtype=np.float64) + 0.5)
    if antialias:
        support = half * scale if scale >= 1.0 else float(half)
        stretch = 1.0 / scale if scale >= 1.0 else 1.0
        lo = np.maximum((centres - support + 0.5).astype(np.int64), 0)
        hi = np.minimum((centres + support + 0.5).astype(np.int64), in_size)
        taps = max(int((hi - lo).max()), 1)
        index = lo[:, None] + np.arange(taps)
        weights = kernel((index - centres[:, None] + 0.5) * stretch)
        weights[index >= hi[:, None]] = 0.0
        total = weights.sum(axis=1, keepdims=True)
        weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    else:
        start = np.floor(centres - 0.5).astype(np.int64) - (half - 1)
        index = start[:, None] + np.arange(2 * half)
        weights = kernel(index - centres[:, None] + 0.5)
    return np.clip(index, 0, in_size - 1), weights.astype(np.float32)


def _resample_rows(a: np.ndarray, index: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Rows of ``a`` (L, X, C) combined by (index, weights): (count, X, C) float32.

    Few taps (enlarging, mild shrinking): one weighted gather per tap. Many taps: outputs
    go in blocks, each one dense product over the input rows the block spans, so only
    those rows are converted to float at a time. Products are split along X to stay
    under :data:`SMALL_PRODUCT`, which BLAS runs on one thread (spreading such small
    products over threads the backends are using costs more than it gains).
    """
    count, taps = index.shape
    out = np.zeros((count, *a.shape[1:]), np.float32)
    if count == 0 or taps <= FEW_TAPS:
        for k in range(taps):
            out += weights[:, k, None, None] * a[index[:, k]]
        return out
    step = max((index[-1, 0] - index[0, 0]) / max(count - 1, 1), 1e-6)
    block = max(1, int(np.ceil(taps / step)))
    for b0 in range(0, count, block):
        idx, w = index[b0 : b0 + block], weights[b0 : b0 + block]
        lo, hi = int(idx.min()), int(idx.max()) + 1
        dense = np.zeros((len(idx), hi - lo), np.float32)
        np.add.at(dense, (np.arange(len(idx))[:, None], idx - lo), w)
        width = max(64, SMALL_PRODUCT // (dense.size * a.shape[2]))
        for x0 in range(0, a.shape[1], width):
            part = a[lo:hi, x0 : x0 + width].astype(np.float32)
            product = dense @ part.reshape(hi - lo, -1)
            out[b0 : b0 + len(idx), x0 : x0 + width] = product.reshape(len(idx), -1, a.shape[2])
    return out


def resample(image: np.ndarray, rows: tuple[np.ndarray, np.ndarray],
             cols: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """An (H, W, C) uint8 image resampled by per-axis taps, rounded to 0..255 as float32."""
    col_index, col_weights = cols
    c_lo, c_hi = int(col_index.min()), int(col_index.max()) + 1
    tall = _resample_rows(image[:, c_lo:c_hi], *rows)
    across = _resample_rows(tall.transpose(1, 0, 2), col_index - c_lo, col_weights)
    return np.clip(np.rint(across.transpose(1, 0, 2)), 0.0, 255.0)
