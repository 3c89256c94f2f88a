"""Map → image: upsample to the photo, colour, overlay, write PNG."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .artifact import atomic_write_bytes

MIN_OVERLAY_SIDE = 256
"""Overlay PNGs of smaller images are enlarged until their longer side reaches this."""


def upsample(saliency: np.ndarray, box: tuple[float, float, float, float],
             image_shape: tuple[int, int]) -> np.ndarray:
    """Resize an (h, w) map bilinearly onto ``box`` (y0, x0, y1, x1) of an image; 0 outside it."""
    height, width = image_shape
    y0, x0, y1, x1 = box
    h, w = saliency.shape
    # affine map from map pixel centres to image coordinates (INTER_LINEAR convention)
    sy, sx = (y1 - y0) / h, (x1 - x0) / w
    matrix = np.array([[sx, 0, x0 + 0.5 * sx - 0.5], [0, sy, y0 + 0.5 * sy - 0.5]], np.float64)
    return cv2.warpAffine(saliency.astype(np.float32), matrix, (width, height),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) * _inside(
        box, image_shape)


def _inside(box: tuple[float, float, float, float], image_shape: tuple[int, int]) -> np.ndarray:
    y0, x0, y1, x1 = box
    ys = np.arange(image_shape[0])[:, None] + 0.5
    xs = np.arange(image_shape[1])[None, :] + 0.5
    return ((ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)).astype(np.float32)


def colorize(saliency: np.ndarray, colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """A [0, 1] map as an RGB uint8 heat map."""
    gray = np.clip(saliency * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(gray, colormap), cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, saliency: np.ndarray, alpha: float = 0.5,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """Blend the coloured map (already at image size) over the RGB image."""
    heat = colorize(saliency, colormap)
    return cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB image as PNG atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"cannot encode {path} as PNG")
    atomic_write_bytes(Path(path), data.tobytes())
    return Path(path)
