"""Model → valid cut → ``f``/``g`` graphs → verification → artifact folder, all or nothing."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reciprocam_ir import __version__
from reciprocam_ir.artifact import (
    FEATURE_NAME,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    POOLED_NAME,
)
from reciprocam_ir.messages import first_line

from ..artifact.explain_graph import add_explain_graphs, explain_spec
from ..artifact.graph_files import (
    declare_output_shape,
    declared_outputs,
    write_ir,
    write_onnx,
    write_token_tail_onnx,
)
from ..artifact.labels import check_count, read_labels_file
from ..artifact.manifest_entries import (
    describe_preprocessing,
    feature_entry,
    graphs_entry,
    tail_entries,
)
from ..artifact.staging import FORMATS, check_destination, staged
from ..artifact.verify import (
    Reference,
    check_graphs,
    check_input_dependence,
    check_mask_rows,
    first_masked_maps,
    input_batch_entry,
    judge,
    one_at_a_time,
    verification_images,
)
from ..errors import ExportError
from ..input_size import InputSize
from .graph_cut import Cut, CutGraph, Split
from .model_source import LoadedModel, load_model
from .token_tail import (
    CLASS_TOKEN,
    SEQUENCES,
    class_token_tail,
    hooked_scores,
    sequences_tail,
    token_weights,
)


def prepare(
    spec: str | nn.Module, weights: str | None, size: InputSize | None
) -> tuple[LoadedModel, CutGraph, torch.Tensor]:
    """Load and trace the model on the first verification image."""
    loaded = load_model(spec, weights, size)
    example = torch.from_numpy(verification_images((1, 3, *loaded.preprocessing.size))[:1])
    return loaded, CutGraph(loaded.model, example), example


def torch_reference(loaded: LoadedModel, split: Split) -> Reference:
    """The model in torch, one image at a time, with its map at the cut (read by a hook on the
    cut's module, so ``f`` is checked against the model itself), and ``g`` one masked map at a
    time.

    For a token cut, the tokens entering the block (a hook on its input) and, as the masked
    scores, the whole model with the stream and its first LayerNorm's output masked by hooks
    (:func:`~.token_tail.hooked_scores`): the definition, not the exported tail.
    """

    def run(module: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x: module(torch.from_numpy(x)).numpy()

    images = verification_images((1, 3, *loaded.preprocessing.size))
    maps: list[torch.Tensor] = []
    block = split.cut.block
    module = loaded.model.get_submodule(split.cut.name)
    hook = module.register_forward_hook(
        lambda module, args, output: maps.append(output.detach().clone())) if block is None \
        else module.register_forward_pre_hook(
            lambda module, args: maps.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            scores = one_at_a_time(run(loaded.model), images)
            if len(maps) != len(images):
                raise ExportError(f"{loaded.name}: layer '{split.cut.name}' ran {len(maps)} "
                                  f"times for {len(images)} images; choose another --layer")
            feature = torch.cat(maps).numpy()
            if block is None:
                masked = first_masked_maps(feature[:1])
                masked_scores = one_at_a_time(run(split.g), masked)
            else:
                masked = check_mask_rows(block.grid)
                masked_scores = hooked_scores(loaded.model, block, torch.from_numpy(images[:1]),
                                              token_weights(torch.from_numpy(masked),
                                                            block.prefix)).numpy()
    except ExportError:
        raise
    except Exception as exc:  # the model's own errors on the second image
        raise ExportError(f"{loaded.name}: the model fails on the check input "
                          f"({first_line(exc)})") from None
    finally:
        hook.remove()
    check_input_dependence(scores, loaded.name)
    return Reference(images, scores, masked, masked_scores, feature)


def token_tail(graph: CutGraph, cut: Cut, kind: str | None) -> tuple[str, nn.Module]:
    """The tail of a token cut: the class-token shortcut where it applies (unless ``kind``
    asks for the masked sequences), else the masked sequences."""
    if kind not in (None, CLASS_TOKEN, SEQUENCES):
        raise ExportError(f"unknown token tail '{kind}' (choose from {CLASS_TOKEN}, {SEQUENCES})")
    shortcut = class_token_tail(graph, cut.block) if kind != SEQUENCES else None
    if shortcut is not None:
        return CLASS_TOKEN, shortcut
    if kind == CLASS_TOKEN:
        raise ExportError(f"the class-token shortcut does not apply at '{cut.name}' (only at "
                          "the last block, when it is LayerNorm -> attention -> residual)")
    return SEQUENCES, sequences_tail(graph, cut.block)


def export_artifact(
    spec: str | nn.Module,
    weights: str | None = None,
    layer: str | None = None,
    size: InputSize | None = None,
    fmt: str = "both",
    out: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
    labels: str | Path | None = None,
    explain_top_k: int = 1,
    token_tail_kind: str | None = None,
    explain_mask: str | None = None,
    explain_mask_sigma: float | None = None,
    explain_mask_strength: float | None = None,
) -> Path:
    """Write the artifact folder for ``spec`` cut at ``layer`` and return its path.

    ``size`` is the input size, N or (height, width) (default: the model's own). A ``labels``
    file (one name per line, or a JSON list) overrides the model's own names. The artifact
    also holds the explain graph of the ``explain_top_k`` best classes, for the map of
    ``explain_mask`` (default: the runtime's; σ and strength as in ``ReciproCAM``). For a
    vision transformer, ``layer`` names a block (the cut is the stream entering it) and
    ``token_tail_kind`` may ask for the ``sequences`` tail where the class-token shortcut
    would apply (to compare them).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}' (choose from {FORMATS})")
    explain_spec(explain_top_k, explain_mask, explain_mask_sigma, explain_mask_strength)
    file_labels = read_labels_file(labels) if labels is not None else None
    log(f"loading {spec}")
    loaded, graph, example = prepare(spec, weights, size)
    log(f"preprocessing: {describe_preprocessing(loaded.preprocessing.to_dict())}")
    cut = graph.find(layer) if layer else graph.default_cut()
    if file_labels is not None:
        names = check_count(file_labels, graph.num_classes, labels)
    else:
        names = loaded.labels if loaded.labels and len(loaded.labels) == graph.num_classes \
            else None
    block = cut.block
    split = graph.split(cut)
    if block is not None:
        tail_kind, tail = token_tail(graph, cut, token_tail_kind)
        split = Split(split.f, tail, None, cut)
    out = Path(out) if out is not None else Path("models") / loaded.name
    check_destination(out)
    if block is None:
        log(f"cutting at '{cut.name}' (feature {'x'.join(map(str, cut.shape))})")
    else:
        log(f"cutting at the tokens entering '{cut.name}' ({cut.description}); tail: "
            f"{tail_kind.replace('_', ' ')}")

    ref = torch_reference(loaded, split)
    with torch.no_grad():
        feature = split.f(example)
    check = partial(check_graphs, tokens=block is not None)
    declared = declared_outputs(cut.shape, graph.num_classes, block is not None)

    with staged(out) as staging:
        modules = {"f": (split.f, example, INPUT_NAME, FEATURE_NAME),
                   "g": (split.g, feature, FEATURE_NAME, OUTPUT_NAME)}
        if split.g_pooled is not None:
            modules["g_pooled"] = (split.g_pooled, feature.mean(dim=(2, 3)), POOLED_NAME,
                                   OUTPUT_NAME)
        onnx_files = {}
        for role, (module, inp, in_name, out_name) in modules.items():
            log(f"writing {role}.onnx")
            onnx_files[role] = staging / f"{role}.onnx"
            if block is not None and role == "g":
                write_token_tail_onnx(module, inp, torch.from_numpy(ref.masked), onnx_files[role])
            else:
                write_onnx(module, inp, onnx_files[role], in_name, out_name)
            declare_output_shape(onnx_files[role], declared[role])
        errors = {"onnxruntime": check("onnxruntime", onnx_files, ref, loaded.name)}
        if fmt in ("ir", "both"):
            ir_files = write_ir(onnx_files, staging, loaded.source["model"], log)
            errors["openvino"] = check("openvino", ir_files, ref, loaded.name)
        if fmt == "ir":
            for path in onnx_files.values():
                path.unlink()
        checked = judge(errors, ref, loaded.name, log, cut.name)
        batch_entry = input_batch_entry(checked)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": loaded.name,
            "source": {**loaded.source, "exporter": f"reciprocam-export {__version__}",
                       "torch": torch.__version__},
            "target_layer": cut.name,
            "input": {"name": INPUT_NAME, **loaded.preprocessing.to_dict(), **batch_entry},
            "feature": feature_entry(cut.shape, block),
            "output": {"name": OUTPUT_NAME, "num_classes": graph.num_classes, "logits": True},
            "labels": names,
            **tail_entries(cut.shape, split.g_pooled is not None,
                           tail_kind if block is not None else None),
            "graphs": graphs_entry(modules, fmt),
            "check": checked,
        }
        add_explain_graphs(staging, manifest, explain_top_k, log,
                           explain_mask, explain_mask_sigma, explain_mask_strength)
    return out
