#!/usr/bin/env python
"""Maps at the engine's default precision against f32: levels kept, difference, warning.

Usage: ``.venv/bin/python scripts/precision_levels.py models/lite0 models/deit_tiny``
(artifact folders; OpenVINO CPU). For each artifact and path (explain graph, general path)
it explains the bundled sample photos at ``precision="auto"`` and at ``"f32"`` and prints
the distinct values per map (median, min), the max map difference, top-1 agreement and
whether :class:`reciprocam_ir.precision.PrecisionWarning` was raised.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from reciprocam_ir import ReciproCAM
from reciprocam_ir.precision import PrecisionWarning, map_levels
from sample_images import sample_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifacts", nargs="+", help="artifact folders")
    args = parser.parse_args()
    images = list(sample_images().values())
    print("| artifact | path | precision | levels median (min) of N | max map diff to f32 "
          "| top-1 agrees | warned |")
    print("|---|---|---|---|---|---|---|")
    for folder in args.artifacts:
        for explain_graph in (True, False):
            cams = {p: ReciproCAM(folder, backend="openvino", precision=p,
                                  explain_graph=explain_graph) for p in ("auto", "f32")}
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", PrecisionWarning)
                exp = {p: cam.explain(images) for p, cam in cams.items()}
            warned = any(w.category is PrecisionWarning for w in caught)
            maps = exp["auto"].saliency[:, 0].reshape(len(images), -1)
            levels = map_levels(maps)
            diff = np.abs(exp["auto"].saliency - exp["f32"].saliency).max()
            agree = int((exp["auto"].targets[:, 0] == exp["f32"].targets[:, 0]).sum())
            path = "explain graph" if explain_graph else cams["f32"].path.name
            print(f"| {folder} | {path} | {cams['auto'].backend.inference_precision} "
                  f"| {int(np.median(levels))} ({levels.min()}) of {maps.shape[1]} "
                  f"| {diff:.3f} | {agree}/{len(images)} | {'yes' if warned else 'no'} |")


if __name__ == "__main__":
    main()
