"""The result of :meth:`ReciproCAM.explain`: maps, targets, scores, and ways to look at them."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .artifact import atomic_write_bytes
from .image_reader import image_size
from .visualise import MIN_OVERLAY_SIDE, overlay, upsample, write_png


def slug(text: str) -> str:
    """A label as a safe file-name fragment."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:60] or "class"


@dataclass
class Explanation:
    """Saliency maps for a batch of B images and K classes each.

    ``saliency`` (B, K, h, w) float32 in [0, 1], the normalised maps before upsampling;
    ``targets`` (B, K) class indices; ``scores`` (B, num_classes) the model's own output
    for each unmasked image.
    """

    saliency: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    images: list[np.ndarray] | None
    """The RGB images explained, as decoded (a JPEG that shrank on load is a reduced
    :class:`.DecodedImage`); None for :meth:`ReciproCAM.explain_tensor` results."""
    boxes: list[tuple[float, float, float, float]] | None
    """Per image, the region (y0, x0, y1, x1) the network saw, in full-image pixels."""
    names: list[str]
    labels: list[str] | None = None
    files: list[list[Path]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.saliency)

    def label(self, k: int) -> str:
        return self.labels[k] if self.labels else f"class {k}"

    def _image(self, i: int) -> np.ndarray:
        if self.images is None:
            raise ValueError("this explanation was made from preprocessed inputs "
                             "(explain_tensor) and holds no images: overlays and upsampled "
                             "maps need explain() on the images")
        return self.images[i]

    def full_image(self, i: int) -> np.ndarray:
        """Image ``i`` at its full size: an image decoded reduced is enlarged bilinearly."""
        image = self._image(i)
        height, width = image_size(image)
        if image.shape[:2] == (height, width):
            return image
        return cv2.resize(np.asarray(image), (width, height), interpolation=cv2.INTER_LINEAR)

    def upsample(self, i: int) -> np.ndarray:
        """The K maps of image ``i`` at the image's own size, (K, H, W) in [0, 1]."""
        shape = image_size(self._image(i))
        return np.stack([upsample(m, self.boxes[i], shape) for m in self.saliency[i]])

    def overlay(self, i: int, k: int = 0, alpha: float = 0.5, min_side: int = 0) -> np.ndarray:
        """Image ``i`` with map ``k`` coloured over it, HxWx3 uint8 RGB; enlarged (bilinear,
        by a whole factor) until its longer side reaches ``min_side``, so that a 64 x 64
        chip is viewable."""
        image = self.full_image(i)
        box = self.boxes[i]
        factor = -(-min_side // max(image.shape[:2])) if min_side else 1
        if factor > 1:
            height, width = image.shape[:2]
            image = cv2.resize(np.asarray(image), (width * factor, height * factor),
                               interpolation=cv2.INTER_LINEAR)
            box = tuple(v * factor for v in box)
        full = upsample(self.saliency[i, k], box, image.shape[:2])
        return overlay(image, full, alpha)

    def stem(self, i: int) -> str:
        return slug(Path(self.names[i]).stem)

    def output_names(self, i: int) -> list[str]:
        stem = self.stem(i)
        return [f"{stem}_{int(c)}_{slug(self.label(int(c)))}.png" for c in self.targets[i]]

    def save(self, out_dir: str | Path, save_npz: bool = False, alpha: float = 0.5) -> list[Path]:
        """Write an overlay PNG per explained class (and ``<stem>.npz``); return the paths."""
        self._image(0)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for i in range(len(self)):
            written.extend(self.save_one(i, out_dir, save_npz, alpha))
        return written

    def save_one(self, i: int, out_dir: Path, save_npz: bool = False,
                 alpha: float = 0.5) -> list[Path]:
        paths = []
        for k, name in enumerate(self.output_names(i)):
            paths.append(write_png(out_dir / name,
                                   self.overlay(i, k, alpha, MIN_OVERLAY_SIDE)))
        if save_npz:
            buffer = io.BytesIO()
            np.savez(buffer, saliency=self.saliency[i].astype(np.float32),
                     targets=self.targets[i].astype(np.int64),
                     scores=self.scores[i].astype(np.float32))
            npz = out_dir / f"{self.stem(i)}.npz"
            atomic_write_bytes(npz, buffer.getvalue())
            paths.append(npz)
        return paths

    def summary(self, i: int, top: int = 5) -> dict:
        """A JSON-ready description of image ``i``: top classes and explained classes."""
        order = np.argsort(-self.scores[i])[:top]
        return {
            "path": self.names[i],
            "top": [{"class": int(c), "label": self.label(int(c)),
                     "score": float(self.scores[i, c])} for c in order],
            "explained": [{"class": int(c), "label": self.label(int(c))}
                          for c in self.targets[i]],
        }
