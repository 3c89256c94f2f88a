"""The explain graph: input → ``f`` → masked scores → top-K → Eq. 6 maps, as one model file.

Any ONNX Runtime or OpenVINO consumer runs it with no project code (DESIGN.md, "Explain
graph"): input ``input``, outputs ``scores`` (B, classes), ``targets`` (B, K) int64 and
``saliency`` (B, K, h, w) in [0, 1]. The computation is stated once, in
:func:`explain_outputs`, over :class:`~.graph_ops.GraphOps`; :func:`onnx_explain_model`
and :func:`ir_explain_model` splice it between the artifact's own ``f`` and tail graphs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reciprocam_ir.artifact import (
    INPUT_NAME,
    OUTPUT_NAME,
    SALIENCY_NAME,
    TARGETS_NAME,
    Artifact,
    write_manifest,
)
from reciprocam_ir.mask_options import mask_option_problem
from reciprocam_ir.masking import (
    DEFAULT_WINDOW_STRENGTH,
    MASK_KINDS,
    REMOVING_MASKS,
    check_sigma,
    check_strength,
    default_scores,
    default_sigma,
    mask_rows,
    pooling_matrix,
    spatial_masks,
)
from reciprocam_ir.messages import first_line

from ..errors import ExportError
from .graph_ops import GraphOps, OnnxOps, OpenVINOOps, Value, onnx_opset
from .verify import TOLERANCE as SCORE_TOLERANCE
from .verify import check_engine, verification_images

Tail = Callable[[Value], Value]
"""Splices the artifact's tail graph (``g`` or ``g_pooled``) onto a value; returns its scores."""
TokenTail = Callable[[Value, Value], Value]
"""Splices a token artifact's ``g`` onto (tokens, mask rows (N + 1, N)); returns its
(B, N + 1, classes) scores."""


@dataclass(frozen=True)
class Head:
    """What follows the cut: an affine GAP head (W, b), a tail graph on pooled rows or maps,
    or a token tail that scores the unmasked tokens and every masked copy itself."""

    num_classes: int
    affine: tuple[np.ndarray, np.ndarray] | None = None
    tail: Tail | None = None
    pooled: bool = True
    token_tail: TokenTail | None = None


@dataclass(frozen=True)
class MapKind:
    """Which map the graph computes: the masks (None: one-hot, Eq. 5) and how rows are scored."""

    masks: np.ndarray | None = None
    softmax: bool = False
    negate: bool = False


def explain_outputs(ops: GraphOps, feature: Value, feature_shape: tuple[int, int, int],
                    head: Head, top_k: int, kind: MapKind = MapKind()
                    ) -> tuple[Value, Value, Value]:
    """(scores, targets, saliency) from the feature map ``feature`` (B, C, h, w), or tokens.

    An affine head scores only the K chosen classes on the N pooled rows (K·N·C
    multiply-adds; without the bias, as ``paths.AffineRows``); any other pooled head scores
    all N + 1 pooled rows, and a head without global pooling all N + 1 masked maps, in one
    batched call of the tail. A token tail takes the tokens and the N + 1 mask rows (the
    all-ones row first) itself.
    """
    c, h, w = feature_shape
    n = h * w
    if head.token_tail is not None:
        rows = head.token_tail(feature, ops.const(mask_rows(n, kind.masks)))
        scores, targets, masked = _chosen(ops, rows, n, head.num_classes, top_k, kind)
        return scores, targets, _finished(ops, masked, top_k, h, w, kind)
    flat = ops.reshape(feature, [-1, c, n])
    if head.affine is not None and not kind.softmax:
        weight, bias = (ops.const(np.ascontiguousarray(a, np.float32)) for a in head.affine)
        mean = ops.reduce("mean", flat, axis=2, keepdims=False)
        scores = ops.binary("add", ops.binary("matmul", mean, ops.transpose(weight, [1, 0])),
                            bias)
        targets = ops.top_k(scores, top_k)
        rows = _pooled_columns(ops, flat, n, kind.masks)
        masked = ops.binary("matmul", ops.gather(weight, targets), rows)  # no bias: AffineRows
    else:
        if head.pooled:
            mix = ops.const(pooling_matrix(n, kind.masks))
            rows = ops.binary("matmul", mix, ops.transpose(flat, [0, 2, 1]))
            out = head.tail(ops.reshape(rows, [-1, c]))
        else:
            maps = ops.binary("mul", ops.reshape(flat, [-1, 1, c, n]),
                              ops.const(_map_weights(n, kind.masks)))
            out = head.tail(ops.reshape(maps, [-1, c, h, w]))
        per_image = ops.reshape(out, [-1, n + 1, head.num_classes])
        scores, targets, masked = _chosen(ops, per_image, n, head.num_classes, top_k, kind)
    return scores, targets, _finished(ops, masked, top_k, h, w, kind)


def _chosen(ops: GraphOps, per_image: Value, n: int, num_classes: int, top_k: int,
            kind: MapKind) -> tuple[Value, Value, Value]:
    """From (B, N + 1, classes) rows, the unmasked first: the scores, the top-K targets and
    their masked scores (B, K, N)."""
    scores = ops.reshape(ops.slice(per_image, 0, 1, axis=1), [-1, num_classes])
    targets = ops.top_k(scores, top_k)
    masked_all = ops.slice(per_image, 1, n + 1, axis=1)
    if kind.softmax:
        masked_all = ops.softmax(masked_all)
    index = ops.expand(ops.reshape(targets, [-1, top_k, 1]), [1, 1, n])
    masked = ops.gather_elements(ops.transpose(masked_all, [0, 2, 1]), index, axis=1)
    return scores, targets, masked


def _finished(ops: GraphOps, masked: Value, top_k: int, h: int, w: int,
              kind: MapKind) -> Value:
    """The (B, K, h, w) saliency of masked scores (B, K, N) (negated for a removing mask)."""
    if kind.negate:
        masked = ops.binary("mul", masked, ops.const(np.float32(-1.0)))
    return ops.reshape(_normalised(ops, masked), [-1, top_k, h, w])


def _pooled_columns(ops: GraphOps, flat: Value, n: int, masks: np.ndarray | None) -> Value:
    """(B, C, N): column n is the exact GAP of masked map n, as ``masking.pooled_masked``."""
    if masks is not None:
        flat = ops.binary("matmul", flat, ops.const(
            np.ascontiguousarray(np.asarray(masks, np.float32).reshape(n, n).T)))
    return ops.binary("div", flat, ops.const(np.float32(n)))


def _map_weights(n: int, masks: np.ndarray | None) -> np.ndarray:
    """(1, N + 1, 1, N): all ones (the unmasked map), then mask n of every masked map."""
    weights = np.eye(n, dtype=np.float32) if masks is None else np.asarray(
        masks, np.float32).reshape(n, n)
    return np.concatenate([np.ones((1, n), np.float32), weights]).reshape(1, n + 1, 1, n)


def _normalised(ops: GraphOps, masked: Value) -> Value:
    """Eq. 6 over the last axis, as ``saliency.normalise``: a row whose values are all equal
    becomes all zeros, a row holding NaN stays NaN (so a consumer can refuse it)."""
    low = ops.reduce("min", masked, axis=2, keepdims=True)
    span = ops.binary("sub", ops.reduce("max", masked, axis=2, keepdims=True), low)
    zero, one = ops.const(np.float32(0.0)), ops.const(np.float32(1.0))
    varies = ops.binary("greater", span, zero)
    scaled = ops.binary("div", ops.binary("sub", masked, low), ops.where(varies, span, one))
    return ops.binary("mul", scaled, ops.where(varies, one, zero))


# --------------------------------------------------------------------------- ONNX ---

def _prefixed_keeping_input(model: Any, prefix: str) -> Any:
    """``model`` with ``prefix`` on every name but its input's: the explain graph's input keeps
    ``f``'s name, on every onnx release (1.18 renames inputs even with ``rename_inputs=False``)."""
    from onnx import compose

    name = model.graph.input[0].name
    model = compose.add_prefix(model, prefix)
    model.graph.input[0].name = name
    for node in model.graph.node:
        node.input[:] = [name if value == prefix + name else value for value in node.input]
    return model


def onnx_explain_model(f: Any, tail: Any, feature_shape: tuple[int, int, int],
                       num_classes: int, top_k: int, pooled: bool,
                       kind: MapKind = MapKind(), tokens: bool = False) -> Any:
    """The explain graph as an ONNX model, from the artifact's ``f`` and tail ONNX models
    (``tokens``: a token artifact's ``g``, inputs tokens and mask rows)."""
    from onnx import TensorProto, compose, helper, version_converter

    from reciprocam_ir.backends.onnxruntime_backend import affine_of_onnx

    opset = max(onnx_opset(f), onnx_opset(tail), 13)
    f, tail = (m if onnx_opset(m) == opset else version_converter.convert_version(m, opset)
               for m in (f, tail))
    affine = affine_of_onnx(tail) if pooled else None
    f = _prefixed_keeping_input(f, "f/")
    tail = compose.add_prefix(tail, "tail/")
    ops = OnnxOps(opset)

    def splice(*values: str) -> str:
        for value, inp in zip(values, tail.graph.input, strict=True):
            ops.nodes.append(helper.make_node("Identity", [value], [inp.name]))
        ops.nodes.extend(tail.graph.node)
        ops.initializers.extend(tail.graph.initializer)
        return tail.graph.output[0].name

    classes = num_classes
    head = Head(classes, token_tail=splice) if tokens else Head(classes, affine, splice, pooled)
    values = explain_outputs(ops, f.graph.output[0].name, feature_shape, head, top_k, kind)
    outputs = []
    for name, value, dtype, shape in zip(
            (OUTPUT_NAME, TARGETS_NAME, SALIENCY_NAME), values,
            (TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT),
            (["batch", classes], ["batch", top_k], ["batch", top_k, *feature_shape[1:]]),
            strict=True):
        ops.nodes.append(helper.make_node("Identity", [value], [name]))
        outputs.append(helper.make_tensor_value_info(name, dtype, shape))
    inputs = list(f.graph.input)
    inputs[0].type.tensor_type.shape.dim[0].Clear()
    inputs[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph = helper.make_graph(list(f.graph.node) + ops.nodes, "reciprocam_explain", inputs,
                              outputs, list(f.graph.initializer) + ops.initializers)
    model = helper.make_model(graph, ir_version=max(f.ir_version, tail.ir_version),
                              opset_imports=_merged_opsets(f, tail, opset))
    model.producer_name = "reciprocam-export"
    return model


def _merged_opsets(f: Any, tail: Any, opset: int) -> list[Any]:
    from onnx import helper

    versions: dict[str, int] = {}
    for o in list(f.opset_import) + list(tail.opset_import):
        domain = "" if o.domain == "ai.onnx" else o.domain
        versions[domain] = max(versions.get(domain, 0), o.version)
    versions[""] = opset
    return [helper.make_opsetid(d, v) for d, v in versions.items()]


# ----------------------------------------------------------------------- OpenVINO ---

def ir_explain_model(f: Any, tail: Any, feature_shape: tuple[int, int, int],
                     num_classes: int, top_k: int, pooled: bool,
                     kind: MapKind = MapKind(), tokens: bool = False) -> Any:
    """The explain graph as an OpenVINO model, from the artifact's ``f`` and tail models
    (``tokens``: a token artifact's ``g``, inputs tokens and mask rows).

    ``f`` and ``tail`` are consumed (their nodes move into the new model).
    """
    import openvino as ov
    import openvino.opset13 as opset

    from reciprocam_ir.backends.openvino_backend import affine_of, detach_result

    affine = affine_of(tail) if pooled and not tokens else None
    feature = detach_result(f)
    parameters = tail.get_parameters()
    tail_scores = detach_result(tail)
    tail_scores.get_tensor().set_names({f"tail/{OUTPUT_NAME}"})

    def splice(*values: Any) -> Any:
        for value, parameter in zip(values, parameters, strict=True):
            for target in list(parameter.output(0).get_target_inputs()):
                target.replace_source_output(value)
        return tail_scores

    head = Head(num_classes, token_tail=splice) if tokens else \
        Head(num_classes, affine, splice, pooled)
    values = explain_outputs(OpenVINOOps(), feature, feature_shape, head, top_k, kind)
    results = []
    for name, value in zip((OUTPUT_NAME, TARGETS_NAME, SALIENCY_NAME), values, strict=True):
        result = opset.result(value)
        result.output(0).get_tensor().set_names({name})
        result.set_friendly_name(name)
        results.append(result)
    (inp,) = f.get_parameters()
    inp.output(0).get_tensor().set_names({INPUT_NAME})
    model = ov.Model(results, [inp], "reciprocam_explain")
    model.validate_nodes_and_infer_types()
    return model


def write_onnx_explain(f_path: Path, tail_path: Path, out: Path,
                       feature_shape: tuple[int, int, int], num_classes: int, top_k: int,
                       pooled: bool, kind: MapKind = MapKind(), tokens: bool = False) -> None:
    import onnx

    model = onnx_explain_model(onnx.load(str(f_path)), onnx.load(str(tail_path)),
                               feature_shape, num_classes, top_k, pooled, kind, tokens)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def write_ir_explain(f_path: Path, tail_path: Path, out: Path,
                     feature_shape: tuple[int, int, int], num_classes: int, top_k: int,
                     pooled: bool, kind: MapKind = MapKind(), tokens: bool = False) -> None:
    import openvino as ov

    core = ov.Core()
    model = ir_explain_model(core.read_model(str(f_path)), core.read_model(str(tail_path)),
                             feature_shape, num_classes, top_k, pooled, kind, tokens)
    ov.save_model(model, str(out), compress_to_fp16=False)


# ------------------------------------------------------------------ the artifact ---

def explain_spec(top_k: int, mask: str | None = None, mask_sigma: float | None = None,
                 mask_strength: float | None = None) -> dict[str, Any]:
    """The manifest's ``explain`` section for these options, defaults resolved as
    :class:`~reciprocam_ir.ReciproCAM` resolves them (scores: the mask's own; ``mask`` None
    is resolved later to the artifact's default); ExportError naming the exporter's option
    for a value out of range or one that does not apply."""
    if mask is not None and mask not in MASK_KINDS:
        raise ExportError(f"--explain-mask {mask}: must be one of {', '.join(MASK_KINDS)}")
    problem = mask_option_problem(mask, mask_sigma, mask_strength, flag_prefix="explain-")
    if problem is not None:
        raise ExportError(problem)
    try:
        if mask_sigma is not None:
            check_sigma(mask_sigma)
        if mask_strength is not None:
            check_strength(mask_strength)
    except ValueError as exc:
        raise ExportError(f"--explain-{str(exc).replace('_', '-')}") from None
    if mask is None:
        return {"top_k": top_k, "mask": None}
    return {"top_k": top_k, "mask": mask,
            "mask_sigma": None if mask == "onehot" else float(
                default_sigma(mask) if mask_sigma is None else mask_sigma),
            "mask_strength": None if mask != "window" else float(
                DEFAULT_WINDOW_STRENGTH if mask_strength is None else mask_strength),
            "scores": default_scores(mask)}


def map_kind(spec: dict[str, Any], feature_shape: tuple[int, int, int],
             outputs_logits: bool) -> MapKind:
    """The :class:`MapKind` of an ``explain`` section (a model that outputs probabilities is
    scored as it is, as the runtime does)."""
    _, h, w = feature_shape
    masks = None if spec["mask"] == "onehot" else spatial_masks(
        h, w, spec["mask"], spec["mask_sigma"], spec["mask_strength"])
    return MapKind(masks, softmax=spec["scores"] == "softmax" and outputs_logits,
                   negate=spec["mask"] in REMOVING_MASKS)


EXPLAIN_FILES = {"onnx": ("explain.onnx", write_onnx_explain),
                 "ir": ("explain.xml", write_ir_explain)}
BACKEND_OF = {"onnx": "onnxruntime", "ir": "openvino"}
TOLERANCE = 1e-4
"""Largest accepted max |map difference| between the explain graph and the runtime's paths."""


def add_explain_graphs(folder: Path, manifest: dict[str, Any], top_k: int,
                       log: Callable[[str], None], mask: str | None = None,
                       mask_sigma: float | None = None,
                       mask_strength: float | None = None) -> dict[str, Any]:
    """Write ``explain.onnx`` / ``explain.xml`` beside the artifact's graphs (one per format
    it has), check them against the runtime's own paths in f32, and rewrite the manifest.

    The graph computes the map of ``mask`` (None: the artifact's default, ``onehot`` for
    maps, ``gaussian`` for tokens; σ and strength as :func:`explain_spec` resolves them),
    scored as that mask is defined. ``folder`` holds the artifact's graphs and ``manifest``
    describes them (written to the folder or not: it is written here); the check loads it with
    :class:`~reciprocam_ir.ReciproCAM` twice, with and without the explain graph, on two
    different seeded inputs, and refuses a graph whose targets or maps differ.
    """
    num_classes = manifest["output"]["num_classes"]
    if not 1 <= top_k <= num_classes:
        raise ExportError(f"--explain-top-k {top_k} must be in 1..{num_classes} "
                          "(the model's number of classes)")
    artifact = Artifact(folder, manifest)
    feature_shape = artifact.feature_shape
    pooled = artifact.g_starts_with_gap
    tokens = artifact.tokens is not None
    spec = explain_spec(top_k, mask or artifact.default_mask, mask_sigma, mask_strength)
    kind = map_kind(spec, feature_shape, artifact.outputs_logits)
    graphs = manifest["graphs"]
    tail = graphs["g_pooled" if pooled else "g"]
    explain = {}
    for fmt, (name, write) in EXPLAIN_FILES.items():
        if fmt in graphs["f"]:
            log(f"writing {name}")
            try:
                write(folder / graphs["f"][fmt], folder / tail[fmt], folder / name,
                      feature_shape, num_classes, top_k, pooled, kind, tokens)
            except Exception as exc:  # onnx/OpenVINO raise several kinds
                raise ExportError(f"cannot build the explain graph {name} "
                                  f"({first_line(exc)})") from None
            explain[fmt] = name
    manifest = write_manifest(folder, {
        **manifest, "graphs": {**graphs, "explain": explain}, "explain": spec})
    x = verification_images((2, *manifest["input"]["shape"][1:]))
    errors = {BACKEND_OF[fmt]: _explain_error(folder, BACKEND_OF[fmt], x, spec)
              for fmt in explain}
    log("check: explain graph max |map difference| = "
        + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    worst = max(errors.values())
    if not worst <= TOLERANCE:
        raise ExportError(f"the explain graph does not reproduce the runtime's maps: max |map "
                          f"difference| = {worst:.3g} (tolerance {TOLERANCE:g})")
    check = {**manifest["check"], "explain_max_abs_map_error": errors}
    return write_manifest(folder, {**manifest, "check": check})


def _explain_error(folder: Path, backend: str, x: np.ndarray, spec: dict[str, Any]) -> float:
    """Max |map difference| of the explain graph against the runtime's general path for the
    same map, f32; infinite when the targets differ or the scores differ beyond the export
    tolerance."""
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.explainer import MAX_MEMORY_BUDGET_MB

    top_k = spec["top_k"]
    options = {"precision": "f32", "mask": spec["mask"], "mask_sigma": spec["mask_sigma"],
               "mask_strength": spec["mask_strength"], "scores": spec["scores"]}
    try:
        # one image a call, with room for its whole explain graph (a ViT's masked sequences
        # take more than the runtime's default budget, which then uses its chunked path)
        room = {"batch_size": 1, "memory_budget_mb": MAX_MEMORY_BUDGET_MB}
        engine = check_engine(backend)
        graph = ReciproCAM(folder, backend=engine, **options, **room)
        general = ReciproCAM(folder, backend=engine, explain_graph=False, **options, **room)
        if graph.graph_path is None:
            return float("inf")
        ours = graph.explain_tensor(x, top_k=top_k)
        theirs = general.explain_tensor(x, top_k=top_k)
    except Exception as exc:  # the runtime's errors: a graph that cannot run
        raise ExportError(f"the explain graph does not run on {backend} ({first_line(exc)})"
                          ) from None
    scale = max(float(np.abs(theirs.scores).max()), 1e-12)
    if not np.array_equal(ours.targets, theirs.targets) or \
            not np.abs(ours.scores - theirs.scores).max() / scale <= SCORE_TOLERANCE:
        return float("inf")
    return float(np.abs(ours.saliency - theirs.saliency).max())
