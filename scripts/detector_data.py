"""A synthetic detection set with known ground truth: textured shapes pasted, with their pixel
masks, on crops of the photos that scikit-image and scikit-learn bundle.

Seeded: the same seed gives the same images, boxes and masks. Classes are shapes (circle,
square, triangle, star); an image holds 1-4 objects, often two of one class, so that a map per
class cannot tell its boxes apart while a map per box can. Writes a YOLO-format folder
(``images/{train,val}``, ``labels/{train,val}``, ``data.yaml``) and, for evaluation, the
masks of the val images (``masks/val/<stem>.npz``: ``masks`` (K, H, W) bool, ``boxes``
(K, 4) x1 y1 x2 y2 pixels, ``classes`` (K,)).

    python scripts/detector_data.py OUT_DIR [--train 800] [--val 60] [--size 256] [--seed 0]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "star")
MIN_SIDE, MAX_SIDE = 28, 88


def backgrounds() -> list[np.ndarray]:
    """The bundled photos (RGB uint8) that backgrounds are cut from."""
    from skimage import data as skdata
    from sklearn.datasets import load_sample_images

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(),
              skdata.hubble_deep_field()]
    photos += list(load_sample_images().images)
    for gray in (skdata.camera(), skdata.brick(), skdata.grass(), skdata.gravel()):
        photos.append(np.repeat(gray[:, :, None], 3, axis=2))
    return [np.ascontiguousarray(p[:, :, :3]).astype(np.uint8) for p in photos]


def background(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    """A random crop of a random photo, resized to ``size`` x ``size``, maybe flipped."""
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(photo[y : y + side, x : x + side], (size, size),
                      interpolation=cv2.INTER_AREA)
    return crop[:, ::-1].copy() if rng.random() < 0.5 else crop


def shape_mask(kind: int, side: int, rng: np.random.Generator) -> np.ndarray:
    """A filled shape of class ``kind`` in a ``side`` x ``side`` bool mask touching its edges."""
    canvas = np.zeros((side, side), np.uint8)
    s = side - 1
    if CLASSES[kind] == "circle":
        cv2.ellipse(canvas, (s // 2, s // 2), (s // 2, s // 2), 0, 0, 360, 1, -1)
    elif CLASSES[kind] == "square":
        canvas[:] = 1
    elif CLASSES[kind] == "triangle":
        apex = int(rng.integers(0, s + 1))
        cv2.fillPoly(canvas, [np.array([[apex, 0], [0, s], [s, s]], np.int32)], 1)
    else:
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(angles) * radii, -np.sin(angles) * radii], 1)
        pts = (pts - pts.min(0)) / (pts.max(0) - pts.min(0)) * s
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    return canvas.astype(bool)


def texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """A fill: a bright colour with stripes, checks or noise (RGB float32)."""
    colour = rng.uniform(40, 255, 3)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        period, angle = rng.uniform(4, 10), rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    elif kind == 1:
        period = rng.uniform(4, 10)
        wave = np.sign(np.sin(xx * np.pi / period) * np.sin(yy * np.pi / period))
    else:
        wave = rng.normal(0, 1, (side, side)).astype(np.float32)
    other = rng.uniform(0, 255, 3)
    mix = (0.5 + 0.35 * wave)[:, :, None]
    return colour * mix + other * (1 - mix)


@dataclass
class Sample:
    """One image and its objects: boxes (K, 4) x1 y1 x2 y2 in pixels (exclusive x2, y2),
    classes (K,), masks (K, H, W) bool."""

    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray
    masks: np.ndarray


def sample(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> Sample:
    """An image with 1-4 objects, placed with little overlap; half the time two share a class."""
    image = background(rng, photos, size).astype(np.float32)
    count = int(rng.integers(1, 5))
    kinds = rng.integers(len(CLASSES), size=count)
    if count >= 2 and rng.random() < 0.5:
        kinds[1] = kinds[0]
    boxes, classes, masks = [], [], []
    occupied = np.zeros((size, size), bool)
    for kind in kinds:
        for _ in range(20):
            side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
            y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
            if occupied[y : y + side, x : x + side].mean() < 0.05:
                break
        else:
            continue
        local = shape_mask(int(kind), side, rng)
        full = np.zeros((size, size), bool)
        full[y : y + side, x : x + side] = local
        full &= ~occupied
        occupied |= full
        fill = texture(rng, side)
        region = image[y : y + side, x : x + side]
        sel = full[y : y + side, x : x + side]
        region[sel] = fill[sel]
        ys, xs = np.nonzero(full)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        classes.append(int(kind))
        masks.append(full)
    noisy = image + rng.normal(0, 4, image.shape)
    return Sample(np.clip(noisy, 0, 255).astype(np.uint8),
                  np.asarray(boxes, np.float32).reshape(-1, 4),
                  np.asarray(classes, np.int64), np.asarray(masks, bool).reshape(-1, size, size))


def samples(count: int, seed: int, size: int = 256) -> list[Sample]:
    """``count`` samples from ``seed`` (the same seed, the same set)."""
    rng = np.random.default_rng(seed)
    photos = backgrounds()
    return [sample(rng, photos, size) for _ in range(count)]


def yolo_lines(s: Sample) -> str:
    """The YOLO label file: class cx cy w h, normalised."""
    size = s.image.shape[0]
    rows = []
    for (x1, y1, x2, y2), c in zip(s.boxes, s.classes, strict=True):
        rows.append(f"{c} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                    f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}")
    return "\n".join(rows) + "\n"


def write_split(out: Path, split: str, items: list[Sample], with_masks: bool) -> None:
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    if with_masks:
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(items):
        stem = f"{split}_{i:04d}"
        cv2.imwrite(str(out / "images" / split / f"{stem}.png"),
                    cv2.cvtColor(s.image, cv2.COLOR_RGB2BGR))
        (out / "labels" / split / f"{stem}.txt").write_text(yolo_lines(s))
        if with_masks:
            np.savez_compressed(out / "masks" / split / f"{stem}.npz", masks=s.masks,
                                boxes=s.boxes, classes=s.classes)


def write_dataset(out: Path, train: int, val: int, size: int, seed: int) -> Path:
    """Write the set; return its ``data.yaml``."""
    write_split(out, "train", samples(train, seed, size), with_masks=False)
    write_split(out, "val", samples(val, seed + 1, size), with_masks=True)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    yaml = out / "data.yaml"
    yaml.write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\n"
                    f"names:\n{names}\n")
    return yaml


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=800)
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(write_dataset(a.out, a.train, a.val, a.size, a.seed))


if __name__ == "__main__":
    main()
