"""Time the manifest's preprocessing against the previous OpenCV-only one, side by side.

The previous one (before torchvision's recipe was reproduced) resized the whole image with
``cv2.INTER_LINEAR`` (no antialiasing) and cropped after. Both run interleaved in one
process; medians of ``--repeat`` runs. Decoding the photo as JPEG is timed for scale.

    .venv/bin/python scripts/preprocess_speed.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reciprocam_ir.preprocess import Preprocessing  # noqa: E402
from sample_images import sample_images  # noqa: E402


def previous(p: Preprocessing, rgb: np.ndarray) -> np.ndarray:
    """The preprocessing this project shipped before (commit be5766d)."""
    h, w = p.size
    if p.resize == "direct":
        img = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        s = p.resize_size / min(rgb.shape[:2])
        rh = max(h, int(round(rgb.shape[0] * s)))
        rw = max(w, int(round(rgb.shape[1] * s)))
        img = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR)
        top, left = (rh - h) // 2, (rw - w) // 2
        img = img[top : top + h, left : left + w]
    x = img.astype(np.float32) * np.float32(p.scale)
    x = (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    photo = sample_images()["astronaut"]
    images = {
        "4000x3000": cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_CUBIC),
        "451x300": sample_images()["chelsea"],
        "256x256": cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA),
        "224x224": cv2.resize(photo, (224, 224), interpolation=cv2.INTER_AREA),
    }
    recipes = {
        "crop 256/224 bilinear": Preprocessing(size=(224, 224), resize_size=256),
        "crop 256/224 bicubic": Preprocessing(size=(224, 224), resize_size=256,
                                              interpolation="bicubic"),
        "direct 224 bilinear": Preprocessing(size=(224, 224), resize="direct"),
    }
    print(f"{'image':<10} {'recipe':<22} {'previous ms':>12} {'now ms':>8} {'ratio':>6}")
    for image_name, rgb in images.items():
        for recipe_name, p in recipes.items():
            old_ms = new_ms = 0.0
            for _ in range(3):  # interleave so machine load hits both alike
                old_ms += median_ms(lambda p=p, rgb=rgb: previous(p, rgb), args.repeat) / 3
                new_ms += median_ms(lambda p=p, rgb=rgb: p(rgb), args.repeat) / 3
            print(f"{image_name:<10} {recipe_name:<22} {old_ms:12.2f} {new_ms:8.2f} "
                  f"{new_ms / old_ms:6.1f}")
    jpeg = cv2.imencode(".jpg", images["4000x3000"])[1]
    decode = median_ms(lambda: cv2.imdecode(jpeg, cv2.IMREAD_COLOR), max(3, args.repeat // 3))
    print(f"for scale: decoding the 4000x3000 photo as JPEG takes {decode:.1f} ms")


if __name__ == "__main__":
    main()
