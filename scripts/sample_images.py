"""Write the bundled sample photos (scikit-image, scikit-learn) as files to explain."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SKIMAGE = ("chelsea", "coffee", "astronaut", "rocket")


def sample_images() -> dict[str, np.ndarray]:
    """Name → HxWx3 uint8 RGB for every bundled photo (no download)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = {name: getattr(data, name)() for name in SKIMAGE}
    bunch = load_sample_images()
    for path, image in zip(bunch.filenames, bunch.images, strict=True):
        images[Path(path).stem] = image
    return images


def write_samples(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rgb in sample_images().items():
        path = folder / f"{name}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        written.append(path)
    return written


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", nargs="?", default="samples")
    for p in write_samples(Path(ap.parse_args().folder)):
        print(p)
