"""Peak memory of decoding a 16-bit PNG, with to_uint8 as it is and as it was, side by side.

Each way runs in a fresh process (peak RSS growth of ``decode_image``); the previous
to_uint8 (whole-image float32 arithmetic, before issue 23) is kept here for comparison.

    .venv/bin/python scripts/decode_memory.py [--side 9000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

MEASURE = """
import json, resource, sys
import numpy as np
from reciprocam_ir import image_reader

def previous(image):
    if image.dtype == np.uint8:
        return image
    scaled = (image.astype(np.float32) - np.float32(0)) * np.float32(255.0 / 65535.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

if sys.argv[2] == "previous":
    image_reader.to_uint8 = previous
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rgb = image_reader.decode_image(data)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"shape": rgb.shape, "grew_mb": grew, "checksum": int(rgb[::97, ::89].sum())}))
"""


def measure(path: Path, way: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), way], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=9000)
    args = parser.parse_args()
    n = args.side
    ramp = np.linspace(0, 65535, n, dtype=np.float64).astype(np.uint16)
    image = np.empty((n, n, 3), np.uint16)
    image[..., 0], image[..., 1], image[..., 2] = ramp[None, :], ramp[:, None], ramp[::-1, None]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deep.png"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        del image
        decoded_mb = n * n * 3 * 2 / 2**20
        print(f"{n}x{n} 16-bit RGB PNG, {path.stat().st_size / 1024:.0f} KB "
              f"(decoded by OpenCV: {decoded_mb:.0f} MB)")
        results = {way: measure(path, way) for way in ("previous", "now")}
    assert results["previous"]["checksum"] == results["now"]["checksum"]
    for way, r in results.items():
        print(f"{way:<9} decode_image peak RSS growth {r['grew_mb']:7.0f} MB")
    print(f"ratio now/previous {results['now']['grew_mb'] / results['previous']['grew_mb']:.2f}")


if __name__ == "__main__":
    main()
