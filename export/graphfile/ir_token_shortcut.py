"""The class-token shortcut for an OpenVINO IR vision transformer's last block (no torch).

The IR recogniser of :mod:`.token_shortcut`, read from the ``ov.Model`` itself (OpenVINO
cannot write an IR back to ONNX, and its conversion already rewrites the block: a
``ScaledDotProductAttention`` for the decomposed attention, ``MatMul`` with
``transpose_b``, the LayerScale moved before the output bias, f16 weights behind a
``Convert``). The block after the cut: the LayerNorm (``MVN``, scale, shift) → q, k, v
``MatMul`` by constants (one fused (3D, D) or three (D, D)), each with its bias →
``ScaledDotProductAttention`` or a ``Softmax`` between two ``MatMul``s → an output
``MatMul`` by a constant (D, D), then per-channel ``Multiply``/``Add`` by constants →
the residual ``Add`` onto the cut. q, k and v are told apart by which attention input each
reaches. As on ONNX, the shortcut is kept only where it equals the masked-sequence tail on
random tokens and masks (OpenVINO, f32).
"""

from __future__ import annotations

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME
from reciprocam_ir.backends.openvino_backend import constant

from ..artifact.graph_ops import OpenVINOOps
from .file_cut import CutPoint
from .ir_graph import F32_CONFIG, key
from .token_shortcut import (
    BlockAttention,
    channel_vector,
    class_token_rows,
    close_enough,
    compose_affine,
    probe_inputs,
    split_fused,
)

PASSING = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Multiply", "Divide", "Add",
           "Split", "VariadicSplit", "Gather", "Slice", "StridedSlice", "Convert")
"""Ops a projection's output passes through on its way into the attention."""


def _readers(value: ov.Output) -> list[ov.Node]:
    return [t.get_node() for t in value.get_target_inputs()]


def _weight(node: ov.Node, width: int) -> np.ndarray | None:
    """A ``MatMul`` by a constant as its (D, k·D) matrix in x @ W layout, else None."""
    if node.get_type_name() != "MatMul":
        return None
    attrs = node.get_attributes()
    w = constant(node.input_value(1))
    if attrs.get("transpose_a") or w is None or w.ndim != 2:
        return None
    w = w.T if attrs.get("transpose_b") else w
    return w if w.shape[0] == width and w.shape[1] in (width, 3 * width) else None


def _bias_after(node: ov.Node, size: int) -> np.ndarray | None:
    readers = _readers(node.output(0))
    if len(readers) != 1 or readers[0].get_type_name() != "Add":
        return None
    values = [constant(v) for v in readers[0].input_values()]
    bias = [v for v in values if v is not None]
    return bias[0].reshape(-1) if len(bias) == 1 and bias[0].size == size else None


def _below(node: ov.Node) -> list[ov.Node]:
    """The nodes ``node`` reaches through :data:`PASSING` ops, and the first other ones."""
    seen, stack, found = set(), [node], []
    while stack:
        for out in stack.pop().outputs():
            for reader in _readers(out):
                if reader.get_instance_id() in seen:
                    continue
                seen.add(reader.get_instance_id())
                found.append(reader)
                if reader.get_type_name() in PASSING:
                    stack.append(reader)
    return found


def _attention_inputs(projections: list[ov.Node]) -> tuple[list[ov.Output], int] | None:
    """The attention's q, k, v inputs and its head count (static shapes), or None."""
    reached = {n.get_instance_id(): n for p in projections for n in _below(p)}
    sdpa = [n for n in reached.values() if n.get_type_name() == "ScaledDotProductAttention"]
    if len(sdpa) == 1:
        ends = [sdpa[0].input_value(i) for i in range(3)]
        if sdpa[0].get_attributes().get("causal"):
            return None
        if sdpa[0].get_input_size() > 3:  # an attention mask: only an all-zero constant
            mask = constant(sdpa[0].input_value(3))
            if mask is None or mask.any():
                return None
        shape = sdpa[0].get_input_partial_shape(0)
    else:
        pairs = [(m, s) for m in reached.values() if m.get_type_name() == "MatMul"
                 for s in _below(m) if s.get_type_name() == "Softmax"]
        if len(pairs) != 1:
            return None
        logits, softmax = pairs[0]
        context = [n for n in _below(softmax) if n.get_type_name() == "MatMul"]
        if len(context) != 1 or context[0].input_value(0).get_node() is not softmax:
            return None
        ends = [logits.input_value(0), logits.input_value(1), context[0].input_value(1)]
        shape = softmax.get_output_partial_shape(0)
    if shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape[1].is_dynamic:
        return None
    return ends, shape[1].get_length()


def _above(value: ov.Output, projections: list[ov.Node]) -> list[ov.Node]:
    """The projections ``value`` is computed from (not through a shape)."""
    ids = {p.get_instance_id(): p for p in projections}
    seen, stack, found = set(), [value.get_node()], []
    while stack:
        node = stack.pop()
        if node.get_instance_id() in ids:
            found.append(node)
            continue
        if node.get_instance_id() in seen or node.get_type_name() in ("ShapeOf", "Parameter"):
            continue
        seen.add(node.get_instance_id())
        stack.extend(v.get_node() for v in node.input_values())
    return found


def find_attention(ln1: ov.Output, stream: ov.Output, width: int
                   ) -> tuple[BlockAttention, int] | None:
    """The attention between the LayerNorm output ``ln1`` and the residual ``Add`` onto
    ``stream`` (the cut), and its head count; None where the block is not of that form."""
    starts = [ln1] + [n.output(0) for n in _readers(ln1) if _keeps_last_axis(n)]
    projections = [n for start in starts for n in _readers(start)
                   if _weight(n, width) is not None and key(n.input_value(0)) == key(start)]
    adds = [n for n in _readers(stream) if n.get_type_name() == "Add"]
    if len(adds) != 1 or len(projections) not in (1, 3):
        return None
    found = _attention_inputs(projections)
    if found is None:
        return None
    ends, heads = found
    if len(projections) == 1:
        (fused,) = projections
        w = _weight(fused, width)
        if w.shape[1] != 3 * width or any(_above(e, projections) != [fused] for e in ends):
            return None
        weights, biases = split_fused(w, _bias_after(fused, 3 * width))
    else:
        roles = [_above(e, projections) for e in ends]
        if any(len(r) != 1 for r in roles) or len({r[0].get_instance_id() for r in roles}) != 3:
            return None
        weights = [_weight(r[0], width) for r in roles]
        if any(w.shape[1] != width for w in weights):
            return None
        biases = [_bias_after(r[0], width) for r in roles]
    out = _output_projection(adds[0], stream, width)
    if out is None:
        return None
    return BlockAttention(*weights, biases[0], biases[2], *out, adds[0].output(0)), heads


def _keeps_last_axis(node: ov.Node) -> bool:
    """A 3-D Transpose that leaves the feature axis last (torchvision's sequence-first)."""
    if node.get_type_name() != "Transpose":
        return False
    perm = constant(node.input_value(1))
    return perm is not None and perm.size == 3 and int(perm[-1]) == 2


def _output_projection(residual: ov.Node, stream: ov.Output, width: int
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """(W_out, scale, shift) of the branch the residual ``Add`` adds onto ``stream``."""
    others = [v for v in residual.input_values() if key(v) != key(stream)]
    if len(others) != 1:
        return None
    node = others[0].get_node()
    steps: list[tuple[str, np.ndarray]] = []
    while node.get_type_name() in ("Transpose", "Reshape", "Multiply", "Add"):
        kind = node.get_type_name()
        if kind == "Transpose" and not _keeps_last_axis(node):
            return None
        if kind in ("Transpose", "Reshape"):
            node = node.input_value(0).get_node()
            continue
        values = [constant(v) for v in node.input_values()]
        vector = channel_vector(next(v for v in values if v is not None), width) \
            if sum(v is not None for v in values) == 1 else None
        if vector is None:
            return None
        steps.insert(0, ("mul" if kind == "Multiply" else "add", vector))
        node = next(v for v, c in zip(node.input_values(), values, strict=True)
                    if c is None).get_node()
    w_out = _weight(node, width)
    if w_out is None or w_out.shape != (width, width):
        return None
    return (w_out, *compose_affine(steps, width))


def class_token_tail(model: ov.Model, feature: ov.Output, scores: ov.Output, cut: CutPoint,
                     ordered: list[ov.Node]) -> ov.Model | None:
    """``g`` of the graph ``model`` holding ``feature`` (the cut) and ``scores``, rewired to
    (feature, masks) → (B, M, classes) by the shortcut; None where the attention is not
    recognised. ``ordered`` is the graph's ops in order (the cut names the LayerNorm
    output by position)."""
    tokens, width = cut.shape
    position, index = (int(v) for v in cut.tokens.ln1.split(":"))
    ln1 = ordered[position].output(index)
    found = find_attention(ln1, feature, width)
    if found is None or width % found[1]:
        return None
    attention, heads = found
    param = ops.parameter([-1, tokens, width], ov.Type.f32, name=FEATURE_NAME)
    masks = ops.parameter([-1, tokens - cut.tokens.prefix], ov.Type.f32, name=MASKS_NAME)
    for target in list(feature.get_target_inputs()):
        target.replace_source_output(param.output(0))
    writer = OpenVINOOps()
    rows, count = class_token_rows(writer, param.output(0), ln1, masks.output(0), attention,
                                   cut.shape, cut.tokens.prefix, heads)
    for target in list(attention.residual.get_target_inputs()):
        target.replace_source_output(rows)
    classes = writer.dim(scores, 1)
    shaped = writer.reshape_to(scores, writer.concat(
        [writer.const(np.array([-1], np.int64)), count, classes], 0))
    g = ov.Model([shaped], [param, masks], "g")
    g.validate_nodes_and_infer_types()
    return g


def verified(shortcut: ov.Model | None, sequences: ov.Model, cut: CutPoint) -> bool:
    """Whether ``shortcut`` equals the masked-sequence ``g`` on random tokens and masks
    (OpenVINO, f32)."""
    if shortcut is None:
        return False
    feature, masks = probe_inputs(cut.shape, cut.tokens.prefix)
    core = ov.Core()
    try:
        ours, theirs = (core.compile_model(m, "CPU", F32_CONFIG)({0: feature, 1: masks})[0]
                        for m in (shortcut, sequences))
    except RuntimeError:  # a graph the shortcut misreads keeps the sequences
        return False
    return close_enough(np.asarray(ours), np.asarray(theirs))
