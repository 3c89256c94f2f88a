"""The resize step done by Pillow itself, for recipes whose tool resizes with PIL.

timm, Hugging Face image processors and Ultralytics' classify transforms call
``PIL.Image.resize`` on the uint8 RGB image (no ``reducing_gap``): PIL's filters differ by
up to one 8-bit step in places from the tensor resampling of torchvision (PIL rounds after
each pass, to fixed-point weights). Pillow is imported only when a manifest asks for it.
"""

from __future__ import annotations

import numpy as np

PIL_FILTERS = {"bilinear": 2, "bicubic": 3}
"""``PIL.Image.Resampling`` codes of the interpolations the manifest names."""
WINDOW_ABOVE = 1 << 24
"""Most pixels of a resized image made whole, then cropped, exactly as the tools do. Beyond
it (a crop of a very long strip at a large size) PIL resizes only the window the input
keeps (its ``box``), in memory bounded by the input: Pillow may then run its two passes in
the other order, so pixels can differ by a few 8-bit steps from the whole resize."""


def pil_resize(rgb: np.ndarray, size: tuple[int, int], rows: tuple[int, int],
               cols: tuple[int, int], interpolation: str, extent: tuple[float, float],
               window_above: int = WINDOW_ABOVE) -> np.ndarray:
    """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of ``rgb`` (HxWx3 uint8)
    resized by PIL to ``size`` (height, width), as float32 0..255.

    ``extent`` (height, width): the part of ``rgb`` in input pixels that the resize spans,
    less than its shape when the image was decoded reduced (its rounded-up size). A resize
    of more than ``window_above`` pixels computes the window alone (:data:`WINDOW_ABOVE`).
    """
    from PIL import Image

    (rh, rw), (r0, r1), (c0, c1) = size, rows, cols
    ey, ex = extent
    image = Image.fromarray(np.ascontiguousarray(np.asarray(rgb)))
    resample = PIL_FILTERS[interpolation]
    if rh * rw <= window_above:
        whole = image.resize((rw, rh), resample, box=(0.0, 0.0, ex, ey))
        return np.asarray(whole.crop((c0, r0, c1, r1)), dtype=np.float32)
    sy, sx = ey / rh, ex / rw
    box = (c0 * sx, r0 * sy, min(c1 * sx, ex), min(r1 * sy, ey))
    return np.asarray(image.resize((c1 - c0, r1 - r0), resample, box=box), dtype=np.float32)
