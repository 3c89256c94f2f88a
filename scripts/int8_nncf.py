"""INT8 recipes compared: NNCF (OpenVINO's quantiser) and ONNX Runtime's QDQ, maps vs float.

The float model (default: EfficientNet-Lite0 with its ImageNet weights, offline) is exported
whole to ONNX and quantised by each recipe; every INT8 graph file is cut with
``reciprocam-export``'s graph-file path and explained on the 30 evaluation images (the 6
bundled photos with their flips, crops and pairs, as ``scripts/evaluate.py`` derives them).

    ort-qdq           ONNX Runtime quantize_static: QDQ, per-channel s8 weights, u8 asymmetric
                      activations (scripts/int8_maps.py's recipe)
    ort-qdq-sym       the same with s8 symmetric activations
    ort-qdq-tensor    the same with per-tensor weights
    nncf-onnx         nncf.quantize on the ONNX model (NNCF defaults) -> QDQ ONNX
    nncf-onnx-nofix   the same with overflow_fix=DISABLE (full 8-bit first-layer weights)
    nncf-ir           nncf.quantize on the OpenVINO model (ov.convert_model) -> INT8 IR
    nncf-ir-nofix     the same with overflow_fix=DISABLE (full 8-bit first-layer weights)
    nncf-torch        nncf.quantize on the torch module -> ov.convert_model -> INT8 IR
    nncf-torch-nofix  the same with overflow_fix=DISABLE

Calibration: seeded random crops (50-100 % of each side, half mirrored) of the 6 photos,
never the evaluation crops. For each recipe and backend: top-1 agreement with the float
model, and the maps of the float model's top-1 class against the float maps (Pearson r,
mean |diff|). For QDQ ONNX recipes the whole graph is also run three ways (ONNX Runtime,
ONNX Runtime with graph optimisations off, i.e. the QDQ arithmetic as written, and
OpenVINO) to tell the quantiser's error from each runtime's INT8 kernels.

    python scripts/int8_nncf.py --work /tmp/int8_nncf
    python scripts/int8_nncf.py --quick --model toy_models:tiny_gap --recipes ort-qdq nncf-ir

The ``nncf-torch`` recipes compile NNCF's CPU extension on first use (a few minutes, cached
in ~/.cache/torch_extensions). Writes ``results.md`` and ``results.json`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

DEFAULT_MODEL = "export.pretrained:efficientnet_lite0"
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
INPUT = "x"
CLOSE_CALL = 0.5
"""A float top-1/top-2 logit gap under this is within the INT8 logit error seen here."""


@dataclass
class Job:
    """What every recipe reads: the float model as a module and as ONNX, the calibration set."""

    module: object
    onnx_path: Path
    calibration: np.ndarray  # (n, 3, H, W) float32, preprocessed
    work: Path


# --------------------------------------------------------------------------- recipes


def ort_qdq(job: Job, name: str, **options) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT: x[None]} for x in job.calibration])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    pre = job.work / "float_pre.onnx"
    if not pre.is_file():
        quant_pre_process(str(job.onnx_path), str(pre))
    out = job.work / f"{name}.onnx"
    quantize_static(str(pre), str(out), Reader(), weight_type=QuantType.QInt8, **options)
    return out


def _nncf_options(nofix: bool) -> dict:
    if not nofix:
        return {}
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    return {"advanced_parameters": AdvancedQuantizationParameters(
        overflow_fix=OverflowFix.DISABLE)}


def nncf_onnx(job: Job, name: str, nofix: bool = False) -> Path:
    import nncf
    import onnx

    data = nncf.Dataset(list(job.calibration), lambda x: {INPUT: x[None]})
    quantised = nncf.quantize(onnx.load(str(job.onnx_path)), data,
                              subset_size=len(job.calibration), **_nncf_options(nofix))
    out = job.work / f"{name}.onnx"
    onnx.save(quantised, str(out))
    return out


def nncf_ir(job: Job, name: str, nofix: bool = False) -> Path:
    import nncf
    import openvino as ov

    data = nncf.Dataset(list(job.calibration), lambda x: x[None])
    quantised = nncf.quantize(ov.convert_model(str(job.onnx_path)), data,
                              subset_size=len(job.calibration), **_nncf_options(nofix))
    out = job.work / f"{name}.xml"
    ov.save_model(quantised, str(out), compress_to_fp16=False)
    return out


def nncf_torch(job: Job, name: str, nofix: bool = False) -> Path:
    """NNCF's PyTorch backend; its quantisers export to ONNX only as OpenVINO's FakeQuantize
    (which ONNX Runtime cannot run), so the quantised module is converted to IR."""
    import copy

    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # first use compiles for minutes
    import nncf
    import openvino as ov
    import torch

    data = nncf.Dataset(list(job.calibration), lambda x: torch.from_numpy(x[None]))
    quantised = nncf.quantize(copy.deepcopy(job.module), data,
                              subset_size=len(job.calibration), **_nncf_options(nofix))
    example = torch.from_numpy(job.calibration[:1])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model = ov.convert_model(quantised, example_input=example)
    model.reshape({0: [-1, *example.shape[1:]]})
    out = job.work / f"{name}.xml"
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


RECIPES: dict[str, Callable[[Job, str], Path]] = {
    "ort-qdq": lambda job, name: ort_qdq(job, name, per_channel=True,
                                         activation_type=_quant_type("QUInt8")),
    "ort-qdq-sym": lambda job, name: ort_qdq(job, name, per_channel=True,
                                             activation_type=_quant_type("QInt8"),
                                             extra_options={"ActivationSymmetric": True}),
    "ort-qdq-tensor": lambda job, name: ort_qdq(job, name, per_channel=False,
                                                activation_type=_quant_type("QUInt8")),
    "nncf-onnx": nncf_onnx,
    "nncf-onnx-nofix": lambda job, name: nncf_onnx(job, name, nofix=True),
    "nncf-ir": nncf_ir,
    "nncf-ir-nofix": lambda job, name: nncf_ir(job, name, nofix=True),
    "nncf-torch": nncf_torch,
    "nncf-torch-nofix": lambda job, name: nncf_torch(job, name, nofix=True),
}


def _quant_type(name: str) -> object:
    from onnxruntime.quantization import QuantType

    return getattr(QuantType, name)


# --------------------------------------------------------------------------- data


def calibration_crops(photos: dict[str, np.ndarray], per_photo: int, seed: int = 123
                      ) -> list[np.ndarray]:
    """Seeded random crops (50-100 % of each side, half of them mirrored) of each photo."""
    rng = np.random.default_rng(seed)
    crops = []
    for rgb in photos.values():
        h, w = rgb.shape[:2]
        for _ in range(per_photo):
            s = rng.uniform(0.5, 1.0)
            ch, cw = int(h * s), int(w * s)
            y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = rgb[y0 : y0 + ch, x0 : x0 + cw]
            crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


def export_float_onnx(module, size: tuple[int, int], path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, *size),), str(path), dynamo=False,
                          opset_version=17, input_names=[INPUT], output_names=["y"],
                          dynamic_axes={INPUT: {0: "n"}, "y": {0: "n"}})


# --------------------------------------------------------------------------- measures


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def compare_maps(cam, images: list[np.ndarray], float_top1: np.ndarray,
                 float_maps: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and the maps of the float top-1 class against the float maps."""
    maps, top1 = [], []
    for image, target in zip(images, float_top1, strict=True):
        exp = cam.explain(image, targets=int(target))
        maps.append(exp.saliency[0, 0])
        top1.append(int(exp.scores[0].argmax()))
    maps = np.stack(maps)
    r = [pearson(a, b) for a, b in zip(maps, float_maps, strict=True)]
    return {"top1_agree": int((np.array(top1) == float_top1).sum()), "images": len(images),
            "pearson_mean": float(np.nanmean(r)), "pearson_min": float(np.nanmin(r)),
            "mean_abs_diff": float(np.abs(maps - float_maps).mean())}


def whole_graph_runs(path: Path, inputs: np.ndarray, float_logits: np.ndarray
                     ) -> dict[str, dict[str, float]]:
    """A QDQ ONNX file run whole by ONNX Runtime (optimised, and with optimisations off:
    the QDQ arithmetic as written) and OpenVINO f32 (the file compiled directly, and
    converted with a dynamic batch as the exporter reads it): top-1 vs float and the
    distance of each run's logits from the as-written ones."""
    import onnxruntime as ort
    import openvino as ov

    def ort_run(optimise: bool) -> np.ndarray:
        options = ort.SessionOptions()
        if not optimise:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {INPUT: x[None]})[0] for x in inputs])

    def ov_run(model: str | ov.Model) -> np.ndarray:
        compiled = ov.Core().compile_model(model, "CPU", F32)
        return np.concatenate([compiled({0: x[None]})[0] for x in inputs])

    converted = ov.convert_model(str(path))  # as reciprocam-export reads it
    converted.reshape({0: [-1, *inputs.shape[1:]]})
    runs = {"as written (ORT, no optimisation)": ort_run(False),
            "onnxruntime": ort_run(True),
            "openvino": ov_run(str(path)),
            "openvino via convert_model": ov_run(converted)}
    written = runs["as written (ORT, no optimisation)"]
    return {name: {"top1_agree": int((y.argmax(1) == float_logits.argmax(1)).sum()),
                   "max_abs_logit_diff_vs_written": float(np.abs(y - written).max()),
                   "max_abs_logit_diff_vs_float": float(np.abs(y - float_logits).max())}
            for name, y in runs.items()}


# --------------------------------------------------------------------------- report


def markdown(results: dict, images: int) -> str:
    close = sum(m < CLOSE_CALL for m in results["float_top1_margin"].values())
    lines = [f"{results['model']}: {images} images ({close} with a float top-1/top-2 logit "
             f"gap under {CLOSE_CALL}), {results['calibration_images']} calibration crops", "",
             "| recipe | backend | top-1 = float | maps r mean (min) | maps mean abs diff |",
             "|---|---|---|---|---|"]
    for recipe, row in results["maps"].items():
        for backend, m in row.items():
            lines.append(f"| {recipe} | {backend} | {m['top1_agree']}/{images} | "
                         f"{m['pearson_mean']:.3f} ({m['pearson_min']:.3f}) | "
                         f"{m['mean_abs_diff']:.3f} |")
    if results["whole"]:
        lines += ["", "Whole QDQ graphs (not cut):", "",
                  "| recipe | run | top-1 = float | max abs logit diff vs as written | "
                  "max abs logit diff vs float |", "|---|---|---|---|---|"]
        for recipe, runs in results["whole"].items():
            for run, m in runs.items():
                lines.append(f"| {recipe} | {run} | {m['top1_agree']}/{images} | "
                             f"{m['max_abs_logit_diff_vs_written']:.3f} | "
                             f"{m['max_abs_logit_diff_vs_float']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/int8_nncf", help="folder for the files written")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="torchvision name or package.module:callable (default: %(default)s)")
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    p.add_argument("--calibration", type=int, default=8, metavar="N",
                   help="random crops per photo for calibration (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="2 evaluation images and 1 calibration crop per photo (smoke run)")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    from evaluate import build_samples, quick_samples

    from export.graphfile.pipeline import export_graph_file
    from export.torch.model_source import load_model
    from reciprocam_ir import ReciproCAM
    from sample_images import sample_images

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    loaded = load_model(args.model, None if ":" in args.model else "none")
    prep = loaded.preprocessing
    samples = build_samples()
    samples = quick_samples(samples) if args.quick else samples
    images = [s.rgb for s in samples]
    per_photo = 1 if args.quick else args.calibration
    calibration = np.concatenate([prep(c) for c in calibration_crops(sample_images(), per_photo)])
    float_onnx = work / "float.onnx"
    export_float_onnx(loaded.model, prep.size, float_onnx)
    job = Job(loaded.model, float_onnx, calibration, work)
    flags = {"mean": prep.mean, "std": prep.std, "scale": prep.scale, "color": prep.color,
             "resize_size": prep.resize_size if prep.resize == "shorter_side_crop" else None}

    def export(path: Path, name: str) -> Path:
        return export_graph_file(path, out=work / f"artifact_{name}", **flags)

    float_art = export(float_onnx, "float")
    inputs = np.concatenate([prep(im) for im in images])
    reference, float_logits = {}, None
    for backend in ("onnxruntime", "openvino"):
        exp = ReciproCAM(float_art, backend=backend, precision="f32").explain(images)
        reference[backend] = (exp.targets[:, 0], exp.saliency[:, 0])
        if float_logits is None:  # the float model's scores, from ONNX Runtime
            float_logits = exp.scores
    ranked = np.sort(float_logits, axis=1)
    margins = ranked[:, -1] - ranked[:, -2]
    log(f"float model exported and explained on {len(images)} images "
        f"({time.perf_counter() - start:.0f} s)")

    results: dict = {"model": args.model, "images": [s.name for s in samples],
                     "calibration_images": len(calibration),
                     "float_top1_margin": {s.name: round(float(m), 3)
                                           for s, m in zip(samples, margins, strict=True)},
                     "maps": {}, "whole": {}, "seconds": {}}
    for name in args.recipes:
        t0 = time.perf_counter()
        log(f"{name}: quantising")
        path = RECIPES[name](job, name)
        art = export(path, name)
        backends = ("onnxruntime", "openvino") if path.suffix == ".onnx" else ("openvino",)
        results["maps"][name] = {}
        for backend in backends:
            cam = ReciproCAM(art, backend=backend, precision="f32")
            results["maps"][name][backend] = compare_maps(cam, images, *reference[backend])
        if path.suffix == ".onnx":
            results["whole"][name] = whole_graph_runs(path, inputs, float_logits)
        results["seconds"][name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {json.dumps(results['maps'][name])} ({results['seconds'][name]} s)")

    table = markdown(results, len(images))
    (work / "results.json").write_text(json.dumps(results, indent=2))
    (work / "results.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
