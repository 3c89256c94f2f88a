"""``reciprocam-export model.onnx|model.xml`` for a YOLO detector: cut, verify, write the
detection artifact (manifest ``task: detect``; DESIGN.md, "Detection artifacts")."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reciprocam_ir import __version__
from reciprocam_ir.artifact import FORMAT_VERSION, sha256_file, write_manifest
from reciprocam_ir.preprocess import Preprocessing

from ..artifact.graph_files import write_ir
from ..artifact.labels import graph_labels, read_labels_file
from ..artifact.manifest_entries import graphs_entry
from ..artifact.staging import FORMATS, check_destination, staged
from ..artifact.verify import check_engine, verification_images
from ..errors import ExportError
from ..input_size import InputSize
from .detect_cut import DETECTIONS_NAME, FEATURE_PREFIX, Level, open_detector, parse_layers
from .file_cut import output_formats
from .tool_recipes import sidecar_metadata

LETTERBOX = {"resize": "pad", "pad_value": 114.0, "pad_position": "center", "scale": 1 / 255,
             "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "color": "RGB",
             "interpolation": "bilinear", "antialias": False}
"""Ultralytics' predict preprocessing: letterbox (aspect kept, centred, grey 114 padding,
cv2 bilinear), RGB, pixels / 255."""
GRID_STRIDE = 16
"""The masks' grid by default: the level nearest this stride (measured, docs/detection.md)."""
TOLERANCE = 1e-3
"""Largest |g(f(x)) − model(x)| accepted, relative to the output's largest magnitude."""


def _error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


def default_grid(levels: list[Level], size: tuple[int, int]) -> int:
    """The level whose stride is nearest :data:`GRID_STRIDE`."""
    return int(np.argmin([abs(np.log2(size[0] / lv.shape[1] / GRID_STRIDE)) for lv in levels]))


def check_runtime(backend: str, files: dict[str, Path], images: np.ndarray,
                  reference: np.ndarray, levels: list[Level]) -> float:
    """Max relative |g(f(x)) − model(x)| with the runtime's own backend in f32, and ``g`` on a
    batch of masked copies against the same copies one at a time."""
    engine = check_engine(backend, None)
    f, g = engine.compile(files["f"]), engine.compile(files["g"])
    outs = [f.outputs(images[i : i + 1]) for i in range(len(images))]
    raw = np.concatenate([g.outputs(*o)[0] for o in outs])
    error = _error(raw, reference)
    rng = np.random.default_rng(0)
    keep = [(rng.random((3, 1, *lv.shape[1:])) < 0.3).astype(np.float32) for lv in levels]
    masked = [o * k for o, k in zip(outs[0], keep, strict=True)]
    batched = g.outputs(*masked)[0]
    single = np.concatenate([g.outputs(*(m[i : i + 1] for m in masked))[0] for i in range(3)])
    return max(error, _error(batched, single))


def export_detector(path: str | Path, layer: str | None = None,
                    size: InputSize | None = None, fmt: str = "both",
                    out: str | Path | None = None,
                    log: Callable[[str], None] = lambda message: None,
                    labels: str | Path | None = None, **preprocessing: Any) -> Path:
    """Cut the YOLO detector at ``path`` (at ``layer``: comma-separated tensor/node names,
    default the backbone's outputs) and write its detection artifact; return its path.

    ``preprocessing`` overrides fields of :data:`LETTERBOX` (Ultralytics' own).
    """
    fmt = output_formats(path, fmt, FORMATS, log)
    source = str(path)
    kind = "onnx" if source.lower().endswith(".onnx") else "ir"
    file_labels = read_labels_file(labels) if labels is not None else None
    log(f"reading {source} (a YOLO detector)")
    graph = open_detector(path, size)
    try:
        prep = Preprocessing(size=graph.input.size, layout=graph.input.layout,
                             **{**LETTERBOX, **{k: tuple(v) if isinstance(v, list) else v
                                                for k, v in preprocessing.items()
                                                if v is not None}})
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{source}: invalid preprocessing: {exc}") from None
    levels = graph.levels(parse_layers(layer))
    grid = default_grid(levels, graph.input.size)
    out = Path(out) if out is not None else Path("models") / Path(source).stem
    check_destination(out)
    log("cutting at " + ", ".join(f"'{lv.name}' ({' x '.join(map(str, lv.shape))})"
                                  for lv in levels))
    images = verification_images(graph.input.shape())
    reference = graph.reference(images)
    if float(np.abs(reference[0] - reference[1]).max()) == 0.0:
        raise ExportError(f"{source}: the output does not depend on the input")
    names = graph_labels({**graph.metadata, **sidecar_metadata(path)}, graph.num_classes,
                         labels, file_labels, log)
    with staged(out) as staging:
        files = graph.write(levels, staging)
        errors = {}
        if kind == "onnx":
            errors["onnxruntime"] = check_runtime("onnxruntime", files, images, reference,
                                                  levels)
            if fmt in ("ir", "both"):
                ir_files = write_ir(files, staging, source, log)
                errors["openvino"] = check_runtime("openvino", ir_files, images, reference,
                                                   levels)
                if fmt == "ir":
                    for onnx_path in files.values():
                        onnx_path.unlink()
        else:
            errors["openvino"] = check_runtime("openvino", files, images, reference, levels)
        log("check: max |g(f(x)) - model(x)| / max(1, |model(x)|) = "
            + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        worst = max(errors.values())
        if not worst <= TOLERANCE:
            raise ExportError(f"{source}: g(f(x)) does not reproduce the model: relative error "
                              f"{worst:.3g} (tolerance {TOLERANCE:g})")
        write_manifest(staging, {
            "format_version": FORMAT_VERSION,
            "task": "detect",
            "name": Path(source).stem,
            "source": {"model": str(Path(source).resolve()), "format": kind,
                       "weights": "embedded in the graph file",
                       "sha256": sha256_file(Path(source)),
                       "exporter": f"reciprocam-export {__version__}"},
            "target_layer": ",".join(lv.name for lv in levels),
            "input": {"name": "input", "source_name": graph.input.name, **prep.to_dict()},
            "feature": {"kind": "levels", "grid": grid, "levels": [
                {"name": f"{FEATURE_PREFIX}{i}", "source_name": lv.name, "shape": list(lv.shape)}
                for i, lv in enumerate(levels)]},
            "output": {"name": DETECTIONS_NAME, "num_classes": graph.num_classes,
                       "logits": False, "layout": "xywh+class_scores"},
            "labels": names,
            "g_starts_with_gap": False,
            "pooled": None,
            "graphs": graphs_entry(("f", "g"), fmt),
            "check": {"reference": "the original graph run by the same runtime",
                      "max_rel_error": errors, "tolerance": TOLERANCE},
        })
    return out
