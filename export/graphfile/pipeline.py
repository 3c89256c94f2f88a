"""``reciprocam-export model.onnx|model.xml``: cut a deployed graph, verify, write the artifact.

No torch: the graph is cut with onnx's tools (ONNX) or the OpenVINO API (IR); the
preprocessing cannot be read from a bare graph, so it comes from the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reciprocam_ir import __version__
from reciprocam_ir.artifact import (
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    sha256_file,
)
from reciprocam_ir.preprocess import CROP_POLICIES, IMAGENET_MEAN, IMAGENET_STD, Preprocessing

from ..artifact.explain_graph import add_explain_graphs, explain_spec
from ..artifact.graph_files import declare_output_shape, declared_outputs, write_ir
from ..artifact.labels import graph_labels, read_labels_file
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
from .file_cut import output_formats
from .tool_recipes import ULTRALYTICS_METADATA, Recipe, sidecar_metadata, tool_recipe

if TYPE_CHECKING:
    from .file_cut import CutPoint
    from .ir_cut import IrCutter
    from .onnx_cut import OnnxCutter

DEFAULT_SCALE = 1.0 / 255.0
DEFAULT_COLOR = "RGB"


def open_graph(path: str | Path, size: InputSize | None = None) -> OnnxCutter | IrCutter:
    """The cutter for a ``.onnx`` or ``.xml`` file (imports only what that one needs)."""
    if str(path).lower().endswith(".onnx"):
        from .onnx_cut import OnnxCutter

        return OnnxCutter(path, size)
    if str(path).lower().endswith(".xml"):
        from .ir_cut import IrCutter

        return IrCutter(path, size)
    raise ExportError(f"model file '{path}': expected an .onnx or .xml (OpenVINO IR) file")


def open_recorded_size(path: str | Path, size: InputSize | None,
                       recipe: Recipe | None) -> OnnxCutter | IrCutter:
    """The graph at ``size``, else at the size its tool recorded when its input takes it."""
    if size is None and recipe is not None and recipe.size is not None:
        try:
            return open_graph(path, recipe.size)
        except ExportError:  # a fixed input size: the graph's own
            pass
    return open_graph(path, size)


def recipe_account(recipe: Recipe | None, given: dict[str, Any],
                   log: Callable[[str], None]) -> str:
    """Where the preprocessing came from, for the log and the manifest; a warning when it
    is an assumption (no flags and nothing recorded: ImageNet's)."""
    for note in recipe.notes if recipe else ():
        log(f"warning: {recipe.source}: {note}")
    stated = {"mean", "std", "scale"} & set(given)
    if recipe is not None:
        return recipe.source + (" and the command line" if given else "")
    if not stated:
        log("warning: no --mean/--std/--scale given and none recorded by the graph's tool: "
            "assuming ImageNet's (x 1/255, mean 0.485 0.456 0.406, std 0.229 0.224 0.225); "
            "state the model's own with the flags")
        return "assumed (ImageNet's)"
    return "the command line"


def coarse_cut_hint(cut: CutPoint, cuts: Sequence[CutPoint]) -> str | None:
    """A hint naming finer cuts when the default cut's grid is 3 x 3 or smaller (a tiny
    input, say): such a map says little more than which corner."""
    if cut.tokens is not None or max(cut.shape[1:]) > 3:
        return None
    finer: dict[tuple[int, ...], str] = {}
    for c in reversed(cuts):
        if c.tokens is None and c.shape[1] * c.shape[2] > cut.shape[1] * cut.shape[2]:
            finer.setdefault(c.shape[1:], c.name)
    named = [f"--layer {name} ({h} x {w})" for (h, w), name in list(finer.items())[:2]]
    return (f"hint: the default cut '{cut.name}' gives a {cut.shape[1]} x {cut.shape[2]} map; "
            + (f"finer cuts: {', '.join(named)}" if named else "no finer cut exists"))


def graph_reference(graph: OnnxCutter | IrCutter, images: np.ndarray, cut: CutPoint,
                    keep_softmax: bool) -> Reference:
    """The original graph's scores and map at the cut, one image at a time, by its own runtime.

    ``g`` on masked maps (or mask rows, for tokens) has no reference but itself: the check
    runs it one map (row) at a time.
    """
    scores = one_at_a_time(lambda x: graph.reference(x, keep_softmax), images)
    feature = one_at_a_time(lambda x: graph.feature(x, cut), images)
    masked = first_masked_maps(feature[:1]) if cut.tokens is None else \
        check_mask_rows(cut.tokens.grid)
    return Reference(images, scores, masked, feature=feature)


def export_graph_file(
    path: str | Path,
    layer: str | None = None,
    size: InputSize | None = None,
    fmt: str = "both",
    out: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    scale: float | None = None,
    color: str | None = None,
    keep_softmax: bool = False,
    resize_size: int | None = None,
    resize: str | None = None,
    labels: str | Path | None = None,
    explain_top_k: int = 1,
    explain_mask: str | None = None,
    explain_mask_sigma: float | None = None,
    explain_mask_strength: float | None = None,
    token_tail: str | None = None,
    **resampling: Any,
) -> Path:
    """Cut the ONNX/IR classifier at ``path`` and write its artifact folder; return its path.

    ``keep_softmax`` keeps a trailing Softmax in ``g`` (scores are then probabilities);
    by default it is dropped and ``g`` outputs the logits. ``size`` (N or (height, width))
    fixes a dynamic input size. ``resize``: ``direct`` (straight to the input size; the
    default), ``crop`` (shorter side to ``resize_size``, then the centre; the default when
    ``resize_size`` is given) or ``pad``; ``resampling``: the other :class:`Preprocessing`
    fields (``interpolation``, ``antialias``, ``pad_position``, ``pad_value``). Class
    names come from the ``labels`` file, else from the graph's metadata when it holds
    exactly one per class. The artifact also holds the explain graph of the
    ``explain_top_k`` best classes, for the map of ``explain_mask`` (default: the
    runtime's; σ and strength as in ``ReciproCAM``). ``token_tail`` ``sequences`` keeps a
    ViT's masked-sequence tail where the class-token shortcut would apply (to compare them).
    """
    explain_spec(explain_top_k, explain_mask, explain_mask_sigma, explain_mask_strength)
    fmt = output_formats(path, fmt, FORMATS, log)
    source = str(path)
    kind = "onnx" if source.lower().endswith(".onnx") else "ir"
    file_labels = read_labels_file(labels) if labels is not None else None
    log(f"reading {source}")
    sidecar = sidecar_metadata(path)
    recipe = tool_recipe(path, sidecar, f"{ULTRALYTICS_METADATA} beside the graph")
    graph = open_recorded_size(path, size, recipe)
    metadata = {**graph.metadata, **sidecar}
    recipe = recipe or tool_recipe(path, metadata)
    given = {k: v for k, v in (("mean", mean), ("std", std), ("scale", scale),
                               ("color", color)) if v is not None}
    if token_tail not in (None, "sequences"):
        raise ExportError(f"unknown token tail '{token_tail}' (only 'sequences' can be asked)")
    graph.class_token_shortcut = token_tail is None
    try:
        if resize is not None or resize_size is not None or recipe is None:
            given["resize"] = resize_policy(resize, resize_size, resampling)
            given["resize_size"] = resize_size
        elif {"pad_position", "pad_value"} & set(resampling):
            raise ValueError("--pad-position and --pad-value apply only to --resize pad")
        given.update(resampling)
        options = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "scale": DEFAULT_SCALE,
                   "color": DEFAULT_COLOR, **(recipe.options if recipe else {}), **given}
        preprocessing = Preprocessing(size=graph.input.size, layout=graph.input.layout,
                                      **{k: tuple(v) if k in ("mean", "std") else v
                                         for k, v in options.items()})
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{source}: invalid preprocessing: {exc}") from None
    recipe_source = recipe_account(recipe, given, log)
    log(f"preprocessing: {describe_preprocessing(preprocessing.to_dict())} ({recipe_source})")
    freed = getattr(graph, "freed_batch", [])
    if freed:
        log(f"batch fixed at 1 by {len(freed)} Reshape(s) ({', '.join(freed[:3])}"
            f"{', ...' if len(freed) > 3 else ''}): made free (their leading 1 copies the "
            "input's batch)")
    cut = graph.find(layer)
    if layer is None:
        hint = coarse_cut_hint(cut, graph.cuts)
        if hint:
            log(hint)
    out = Path(out) if out is not None else Path("models") / Path(source).stem
    check_destination(out)
    log(f"cutting at '{cut.name}' (feature {cut.description})")
    ref = graph_reference(graph, verification_images(graph.input.shape()), cut, keep_softmax)
    check_input_dependence(ref.scores, source)
    num_classes = int(ref.scores.shape[1])
    softmax_removed = graph.softmax_input is not None and not keep_softmax
    if softmax_removed:
        log("dropping the final Softmax: g outputs logits (--keep-softmax keeps it)")
    names = graph_labels(metadata, num_classes, labels, file_labels, log)

    check = partial(check_graphs, tokens=cut.tokens is not None)
    with staged(out) as staging:
        files = graph.write(cut, staging, keep_softmax)
        if cut.tokens is not None:
            log("tail: the class-token shortcut (checked equal to the masked sequences)"
                if getattr(graph, "token_tail", None) == "class_token" else
                "tail: masked sequences")
        errors = {}
        if kind == "onnx":
            declared = declared_outputs(cut.shape, num_classes, cut.tokens is not None)
            for role, onnx_path in files.items():
                declare_output_shape(onnx_path, declared[role])
            errors["onnxruntime"] = check("onnxruntime", files, ref, source)
            if fmt in ("ir", "both"):
                ir_files = write_ir(files, staging, source, log)
                # OpenVINO's own run of the original graph, converted as f and g were:
                # INT8 kernels differ between runtimes and conversion paths
                from .ir_cut import IrCutter

                ov_graph = IrCutter(path, size, convert=True)
                ov_scores = one_at_a_time(lambda x: ov_graph.reference(x, keep_softmax),
                                          ref.images)
                errors["openvino"] = check(
                    "openvino", ir_files, Reference(ref.images, ov_scores, ref.masked), source)
                if fmt == "ir":
                    for onnx_path in files.values():
                        onnx_path.unlink()
        else:
            errors["openvino"] = check("openvino", files, ref, source)
        checked = judge(errors, ref, source, log, cut.name)
        batch_entry = input_batch_entry(checked)
        layout = cut.tokens
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": Path(source).stem,
            "source": {"model": str(Path(source).resolve()), "format": kind,
                       "weights": "embedded in the graph file",
                       "sha256": sha256_file(Path(source)),
                       "exporter": f"reciprocam-export {__version__}",
                       **_versions(kind)},
            "target_layer": cut.name,
            "input": {"name": INPUT_NAME, "source_name": graph.input.name,
                      **preprocessing.to_dict(), "recipe_source": recipe_source, **batch_entry},
            "feature": feature_entry(cut.shape, layout),
            "output": {"name": OUTPUT_NAME, "num_classes": num_classes,
                       "logits": not (graph.softmax_input is not None and keep_softmax),
                       "softmax_removed": softmax_removed},
            "labels": names,
            **tail_entries(cut.shape, "g_pooled" in files,
                           getattr(graph, "token_tail", "sequences") if layout is not None
                           else None),
            "graphs": graphs_entry(files, fmt),
            "check": {"reference": "the original graph run by the same runtime"
                      + (", pre-Softmax" if softmax_removed else ""),
                      **checked},
        }
        add_explain_graphs(staging, manifest, explain_top_k, log,
                           explain_mask, explain_mask_sigma, explain_mask_strength)
    return out


def resize_policy(resize: str | None, resize_size: int | None, options: dict[str, Any]) -> str:
    """The manifest's policy for ``--resize`` (``crop`` needs ``--resize-size``, and only it)."""
    policy = {None: "direct" if resize_size is None else "shorter_side_crop",
              "crop": "shorter_side_crop", "squash-crop": "squash_crop"}.get(resize, resize)
    if (policy in CROP_POLICIES) != (resize_size is not None):
        raise ValueError("--resize-size N goes with --resize crop or squash-crop, and they "
                         "need it")
    if policy != "pad" and {"pad_position", "pad_value"} & set(options):
        raise ValueError("--pad-position and --pad-value apply only to --resize pad")
    return policy


def _versions(kind: str) -> dict[str, str]:
    import openvino

    versions = {"openvino": openvino.__version__}
    if kind == "onnx":
        import onnx

        versions["onnx"] = onnx.__version__
    return versions
