"""Model → valid cut → ``f``/``g`` graphs → verification → artifact folder, all or nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from reciprocam_ir import __version__
from reciprocam_ir.artifact import (
    FEATURE_NAME,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    POOLED_NAME,
    write_manifest,
)
from reciprocam_ir.masking import DEFAULT_MASK, masked_batch

from .errors import ExportError
from .explain_graph import add_explain_graphs, explain_spec
from .graph_cut import CutGraph
from .graph_files import onnx_to_ir, write_onnx
from .model_source import LoadedModel, load_model
from .staging import FORMATS, check_destination, staged
from .verify import check_graphs, judge, verification_input


def prepare(
    spec: str | nn.Module, weights: str | None, size: int | None
) -> tuple[LoadedModel, CutGraph, torch.Tensor]:
    """Load and trace the model on the fixed verification input."""
    loaded = load_model(spec, weights, size)
    example = torch.from_numpy(verification_input((1, 3, *loaded.preprocessing.size)))
    return loaded, CutGraph(loaded.model, example), example


def export_artifact(
    spec: str | nn.Module,
    weights: str | None = None,
    layer: str | None = None,
    size: int | None = None,
    fmt: str = "both",
    out: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
    explain_top_k: int = 1,
    explain_mask: str = DEFAULT_MASK,
    explain_mask_sigma: float | None = None,
    explain_mask_strength: float | None = None,
) -> Path:
    """Write the artifact folder for ``spec`` cut at ``layer`` and return its path.

    The artifact also holds the explain graph of the ``explain_top_k`` best classes, for the
    map of ``explain_mask`` (σ and strength as in ``ReciproCAM``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}' (choose from {FORMATS})")
    explain_spec(explain_top_k, explain_mask, explain_mask_sigma, explain_mask_strength)
    log(f"loading {spec}")
    loaded, graph, example = prepare(spec, weights, size)
    cut = graph.find(layer) if layer else graph.default_cut()
    split = graph.split(cut)
    out = Path(out) if out is not None else Path("models") / loaded.name
    check_destination(out)
    log(f"cutting at '{cut.name}' (feature {'x'.join(map(str, cut.shape))})")

    with torch.no_grad():
        reference = loaded.model(example).numpy()
        feature = split.f(example)
        masked = torch.from_numpy(masked_batch(feature[0].numpy(), 0, 3))
        masked_reference = split.g(masked).numpy()
        pooled_example = feature.mean(dim=(2, 3))

    with staged(out) as staging:
        modules = {"f": (split.f, example, INPUT_NAME, FEATURE_NAME),
                   "g": (split.g, feature, FEATURE_NAME, OUTPUT_NAME)}
        if split.g_pooled is not None:
            modules["g_pooled"] = (split.g_pooled, pooled_example, POOLED_NAME, OUTPUT_NAME)
        onnx_files = {}
        for role, (module, inp, in_name, out_name) in modules.items():
            log(f"writing {role}.onnx")
            onnx_files[role] = staging / f"{role}.onnx"
            write_onnx(module, inp, onnx_files[role], in_name, out_name)
        errors = {"onnxruntime": check_graphs("onnxruntime", onnx_files, example.numpy(),
                                              reference, masked_reference)}
        ir_files = {}
        if fmt in ("ir", "both"):
            for role, path in onnx_files.items():
                log(f"writing {role}.xml")
                ir_files[role] = staging / f"{role}.xml"
                onnx_to_ir(path, ir_files[role], loaded.source["model"])
            errors["openvino"] = check_graphs("openvino", ir_files, example.numpy(), reference,
                                              masked_reference)
        if fmt == "ir":
            for path in onnx_files.values():
                path.unlink()
        check = judge(errors, reference, "exported graphs", log)
        graphs = {role: {**({"onnx": f"{role}.onnx"} if fmt != "ir" else {}),
                         **({"ir": f"{role}.xml"} if ir_files else {})} for role in modules}
        labels = loaded.labels if loaded.labels and len(loaded.labels) == graph.num_classes \
            else None
        c, h, w = cut.shape
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": loaded.name,
            "source": {**loaded.source, "exporter": f"reciprocam-export {__version__}",
                       "torch": torch.__version__},
            "target_layer": cut.name,
            "input": {"name": INPUT_NAME, **loaded.preprocessing.to_dict()},
            "feature": {"name": FEATURE_NAME, "shape": [c, h, w]},
            "output": {"name": OUTPUT_NAME, "num_classes": graph.num_classes, "logits": True},
            "labels": labels,
            "g_starts_with_gap": split.g_pooled is not None,
            "pooled": {"name": POOLED_NAME, "shape": [c]} if split.g_pooled is not None
            else None,
            "graphs": graphs,
            "check": {"input": "seeded standard normal (numpy default_rng(0))", **check},
        }
        add_explain_graphs(staging, write_manifest(staging, manifest), explain_top_k, log,
                           explain_mask, explain_mask_sigma, explain_mask_strength)
    return out
