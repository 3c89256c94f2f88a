"""The result of explaining a detector: per image its kept boxes and one map per box."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .artifact import atomic_write_bytes
from .explanation import slug
from .visualise import overlay, upsample, write_png

BOX_COLOUR = (255, 255, 255)


@dataclass
class DetectionExplanation:
    """For each of B images: ``boxes`` (K_i, 4) x1 y1 x2 y2 in image pixels, ``targets``
    (K_i,) their classes, ``scores`` (K_i,) their scores, ``saliency`` (K_i, h, w) float32 in
    [0, 1], one map per box on the feature grid (before upsampling). ``regions`` (y0, x0,
    y1, x1): the part of each image the network input covers (its letterbox)."""

    saliency: list[np.ndarray]
    targets: list[np.ndarray]
    scores: list[np.ndarray]
    boxes: list[np.ndarray]
    images: list[np.ndarray]
    regions: list[tuple[float, float, float, float]]
    names: list[str]
    labels: list[str] | None = None

    def __len__(self) -> int:
        return len(self.saliency)

    def label(self, k: int) -> str:
        return self.labels[k] if self.labels else f"class {k}"

    def upsample(self, i: int) -> np.ndarray:
        """The K_i maps of image ``i`` at the image's own size, (K_i, H, W) in [0, 1]."""
        shape = self.images[i].shape[:2]
        return np.stack([upsample(m, self.regions[i], shape) for m in self.saliency[i]]) \
            if len(self.saliency[i]) else np.zeros((0, *shape), np.float32)

    def overlay(self, i: int, k: int, alpha: float = 0.5) -> np.ndarray:
        """Image ``i`` with box ``k``'s map coloured over it, the box outlined and labelled."""
        image = self.images[i]
        full = upsample(self.saliency[i][k], self.regions[i], image.shape[:2])
        out = np.ascontiguousarray(overlay(image, full, alpha))
        x1, y1, x2, y2 = (int(round(float(v))) for v in self.boxes[i][k])
        thickness = max(1, round(min(image.shape[:2]) / 200))
        cv2.rectangle(out, (x1, y1), (x2, y2), BOX_COLOUR, thickness)
        text = f"{self.label(int(self.targets[i][k]))} {float(self.scores[i][k]):.2f}"
        scale = max(0.4, min(image.shape[:2]) / 600)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = y1 - th - base if y1 - th - base >= 0 else y2
        cv2.rectangle(out, (x1, top), (x1 + tw, top + th + base), BOX_COLOUR, -1)
        cv2.putText(out, text, (x1, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
        return out

    def stem(self, i: int) -> str:
        return slug(Path(self.names[i]).stem)

    def output_names(self, i: int) -> list[str]:
        """One overlay file name per box: ``<stem>_box<k>_<class>_<label>.png``."""
        stem = self.stem(i)
        return [f"{stem}_box{k}_{int(c)}_{slug(self.label(int(c)))}.png"
                for k, c in enumerate(self.targets[i])]

    def save_one(self, i: int, out_dir: Path, save_npz: bool = False,
                 alpha: float = 0.5) -> list[Path]:
        """Write image ``i``'s overlays, one per box in box order (then ``<stem>.npz``)."""
        out_dir = Path(out_dir)
        paths = [write_png(out_dir / name, self.overlay(i, k, alpha))
                 for k, name in enumerate(self.output_names(i))]
        if save_npz:
            buffer = io.BytesIO()
            np.savez(buffer, saliency=self.saliency[i].astype(np.float32),
                     targets=self.targets[i].astype(np.int64),
                     scores=self.scores[i].astype(np.float32),
                     boxes=self.boxes[i].astype(np.float32))
            npz = out_dir / f"{self.stem(i)}.npz"
            atomic_write_bytes(npz, buffer.getvalue())
            paths.append(npz)
        return paths

    def save(self, out_dir: str | Path, save_npz: bool = False, alpha: float = 0.5) -> list[Path]:
        """Write every image's overlays (and npz); return the paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return [p for i in range(len(self)) for p in self.save_one(i, out_dir, save_npz, alpha)]

    def summary(self, i: int, files: list[Path] | None = None) -> dict:
        """Image ``i`` as JSON: its path and ``boxes``, each with the overlay ``files`` written
        for it (``files`` as :meth:`save_one` returned them)."""
        overlays = [str(f) for f in (files or []) if Path(f).suffix == ".png"]
        return {"path": self.names[i], "boxes": [
            {"box": [round(float(v), 2) for v in box], "class": int(c),
             "label": self.label(int(c)), "score": float(s),
             "files": overlays[k : k + 1]}
            for k, (box, c, s) in enumerate(zip(self.boxes[i], self.targets[i], self.scores[i],
                                                strict=True))]}
