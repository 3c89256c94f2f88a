"""The main job end to end: export the pretrained EfficientNet-Lite0, explain sample photos.

Writes ``models/efficientnet_lite0/`` and overlays under ``explanations/``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sample_images import write_samples

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*cmd: str) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", default="openvino", choices=("openvino", "onnxruntime"))
    ap.add_argument("--out", default="explanations")
    args = ap.parse_args()
    artifact = ROOT / "models" / "efficientnet_lite0"
    run(str(BIN / "reciprocam-export"), "export.pretrained:efficientnet_lite0",
        "--out", str(artifact))
    samples = write_samples(ROOT / "samples")
    run(str(BIN / "reciprocam"), "explain", str(artifact), *map(str, samples),
        "--backend", args.backend, "--top-k", "1", "--out", args.out, "--json")
    print(f"overlays written to {ROOT / args.out}")


if __name__ == "__main__":
    main()
