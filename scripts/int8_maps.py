"""How far do INT8 maps drift from f32? EfficientNet-Lite0 (ImageNet weights, offline).

The f32 model is exported whole to ONNX, quantised with ONNX Runtime's static quantiser
(QDQ, per-channel, calibrated on the bundled photos and their mirror images), and both
files are cut with ``reciprocam-export``'s graph-file path. For each photo, the maps of
the f32 model's top-1 class are compared:

    .venv/bin/python scripts/int8_maps.py --work /tmp/int8
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/int8_maps", help="folder for the files written")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from export.graphfile.pipeline import export_graph_file
    from export.pretrained import efficientnet_lite0
    from reciprocam_ir import ReciproCAM
    from sample_images import sample_images

    f32_onnx = work / "lite0.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(efficientnet_lite0(), (torch.zeros(1, 3, 224, 224),), str(f32_onnx),
                          dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    photos = sample_images()
    images = list(photos.values())
    f32 = export_graph_file(f32_onnx, out=work / "artifact_f32")
    prep = ReciproCAM(f32, backend="onnxruntime").preprocessing
    calib = [prep(im) for im in images]
    calib += [x[..., ::-1].copy() for x in calib]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": x} for x in calib])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    pre = work / "lite0_pre.onnx"
    quant_pre_process(str(f32_onnx), str(pre))
    int8_onnx = work / "lite0_int8.onnx"
    quantize_static(str(pre), str(int8_onnx), Reader(), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    int8 = export_graph_file(int8_onnx, out=work / "artifact_int8")
    m = json.loads((int8 / "manifest.json").read_text())
    print(f"int8 cut at {m['target_layer']}; check {m['check']['per_backend']}")
    for backend in ("onnxruntime", "openvino"):
        ref = ReciproCAM(f32, backend=backend, precision="f32").explain(images)
        cam = ReciproCAM(int8, backend=backend, precision="f32")
        top1 = [int(t) for t in ref.targets[:, 0]]
        q = np.concatenate([cam.explain(im, targets=t).saliency for im, t in
                            zip(images, top1, strict=True)])
        q_top1 = [int(t) for t in cam.explain(images).targets[:, 0]]
        r = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in
             zip(q, ref.saliency, strict=True)]
        diff = np.abs(q - ref.saliency)
        agree = sum(a == b for a, b in zip(top1, q_top1, strict=True))
        print(f"{backend}: top-1 agrees on {agree}/"
              f"{len(images)}; maps of the f32 top-1 class: Pearson r mean {np.mean(r):.3f} "
              f"(min {np.min(r):.3f}), mean |diff| {diff.mean():.3f}, max |diff| "
              f"{diff.max():.3f}")


if __name__ == "__main__":
    main()
