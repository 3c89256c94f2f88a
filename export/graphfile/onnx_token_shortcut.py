"""The class-token shortcut for an ONNX vision transformer's last block (no torch).

The ONNX recogniser of :mod:`.token_shortcut`: where the block after the cut is LayerNorm →
attention (one fused q|k|v ``MatMul`` by a constant (D, 3D), as timm and torchvision export
it, or three (D, D) ones, as Hugging Face's separate query, key and value; a ``Softmax``; an
output ``MatMul`` by a constant (D, D) or a ``Gemm``, then per-channel ``Mul``/``Add`` by
constants: its bias, a LayerScale) → residual ``Add``, ``g`` computes only the class
token's row of the block for each mask row.

The weights are read from the graph's constants, not from a trusted op pattern, so the
shortcut is accepted only when it equals the masked-sequence tail on random tokens and masks
(ONNX Runtime, f32); otherwise the caller keeps that tail.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME, OUTPUT_NAME

from ..artifact.graph_ops import OnnxOps, onnx_opset
from .file_cut import CutPoint
from .token_shortcut import (
    BlockAttention,
    channel_vector,
    class_token_rows,
    close_enough,
    compose_affine,
    probe_inputs,
    split_fused,
)

PASSING = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Mul", "Div", "Add", "Sqrt",
           "Cast", "Split", "Gather", "Slice")
"""Ops a projection's output passes through on its way into the attention's MatMuls."""


def find_attention(model: onnx.ModelProto, cut: CutPoint) -> BlockAttention | None:
    """The attention between the cut's LayerNorm output and the residual ``Add`` onto the
    cut, or None where the block is not of that form."""
    graph = model.graph
    consts = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Identity" and node.input[0] in consts:  # a shared constant
            consts[node.output[0]] = consts[node.input[0]]

    def const(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(consts[name]) if name in consts else None

    users: dict[str, list[onnx.NodeProto]] = {}
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    ln1, width = cut.tokens.ln1, cut.shape[1]
    inputs = [ln1] + [n.output[0] for n in users.get(ln1, []) if _keeps_last_axis(n)]
    projections = [n for i in inputs for n in users.get(i, []) if n.op_type == "MatMul"
                   and n.input[0] == i and (w := const(n.input[1])) is not None
                   and w.ndim == 2 and w.shape[0] == width and w.shape[1] in (width, 3 * width)]
    adds = [n for n in users.get(FEATURE_NAME, []) if n.op_type == "Add"]
    if len(adds) != 1:
        return None
    if len(projections) == 1 and const(projections[0].input[1]).shape[1] == 3 * width:
        fused = projections[0]
        weights, biases = split_fused(const(fused.input[1]),
                                      _bias_after(fused.output[0], users, const, 3 * width))
    elif len(projections) == 3:
        roles = _roles(projections, users, producer, consts)
        if roles is None:
            return None
        weights = [const(n.input[1]) for n in roles]
        biases = [_bias_after(n.output[0], users, const, width) for n in roles]
    else:
        return None
    out = _output_projection(adds[0], producer, consts, const, width)
    if out is None:
        return None
    return BlockAttention(*weights, biases[0], biases[2], *out, adds[0].output[0])


def _roles(projections: list[onnx.NodeProto], users, producer, consts
           ) -> list[onnx.NodeProto] | None:
    """Three projections ordered q, k, v: q reaches the first input of the MatMul whose
    product a Softmax normalises, k its second, v the MatMul reading that Softmax."""
    matmuls = {id(n): n for p in projections for n in _below(p.output[0], users)
               if n.op_type == "MatMul"}
    pairs = [(m, s) for m in matmuls.values() for s in _below(m.output[0], users)
             if s.op_type == "Softmax"]
    if len(pairs) != 1:
        return None
    logits, softmax = pairs[0]
    context = [n for n in _below(softmax.output[0], users) if n.op_type == "MatMul"]
    if len(context) != 1:
        return None
    ends = (logits.input[0], logits.input[1], context[0].input[1])
    roles = []
    for end in ends:
        found = [p for p in projections if end in
                 {o for n in _below(p.output[0], users) for o in n.output} | {p.output[0]}]
        if len(found) != 1:
            return None
        roles.append(found[0])
    return roles if len({id(r) for r in roles}) == 3 else None


def _below(tensor: str, users) -> list[onnx.NodeProto]:
    """The nodes ``tensor`` reaches through :data:`PASSING` ops, and the first other ones."""
    seen, stack, found = set(), [tensor], []
    while stack:
        for node in users.get(stack.pop(), ()):
            if id(node) in seen:
                continue
            seen.add(id(node))
            found.append(node)
            if node.op_type in PASSING:
                stack.extend(node.output)
    return found


def _output_projection(residual: onnx.NodeProto, producer, consts, const, width: int
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """(W_out, scale, shift) of the branch the residual ``Add`` adds onto the cut."""
    node = producer.get(next(i for i in residual.input if i != FEATURE_NAME))
    steps: list[tuple[str, np.ndarray]] = []
    while node is not None and node.op_type in ("Transpose", "Reshape", "Mul", "Add"):
        if node.op_type == "Transpose" and not _keeps_last_axis(node):
            return None
        if node.op_type in ("Mul", "Add"):  # LayerScale, the output projection's bias
            values = [const(i) for i in node.input if i in consts]
            vector = channel_vector(values[0], width) if len(values) == 1 else None
            if vector is None:
                return None
            steps.insert(0, (node.op_type.lower(), vector))
        node = producer.get(next(i for i in node.input if i not in consts))
    if node is None or node.op_type not in ("MatMul", "Gemm") or node.input[1] not in consts:
        return None
    w_out = const(node.input[1])
    if node.op_type == "Gemm":  # torchvision's out_proj: A·Bᵀ + C
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0:
            return None
        w_out = w_out.T if attrs.get("transB", 0) else w_out
        if len(node.input) > 2 and node.input[2]:
            bias = const(node.input[2])
            vector = channel_vector(bias, width) if bias is not None else None
            if vector is None:
                return None
            steps.insert(0, ("add", vector))
    if w_out.shape != (width, width):
        return None
    return (w_out, *compose_affine(steps, width))


def _keeps_last_axis(node: onnx.NodeProto) -> bool:
    """A 3-D Transpose that leaves the feature axis last (torchvision's sequence-first)."""
    if node.op_type != "Transpose":
        return False
    perm = next((list(helper.get_attribute_value(a)) for a in node.attribute
                 if a.name == "perm"), None)
    return perm is not None and len(perm) == 3 and perm[-1] == 2


def _bias_after(tensor: str, users, const, size: int) -> np.ndarray | None:
    adds = [n for n in users.get(tensor, []) if n.op_type == "Add"]
    if len(adds) != 1:
        return None
    bias = [const(i) for i in adds[0].input if i != tensor]
    return bias[0].reshape(-1) if len(bias) == 1 and bias[0] is not None \
        and bias[0].size == size else None


def class_token_tail(model: onnx.ModelProto, cut: CutPoint, heads: int
                     ) -> onnx.ModelProto | None:
    """``g`` (feature → scores) rewritten to (feature, masks) → (B, M, classes) by the
    shortcut, or None where the attention is not recognised."""
    attention = find_attention(model, cut)
    if attention is None:
        return None
    model = copy.deepcopy(model)
    graph = model.graph
    ops = OnnxOps(max(onnx_opset(model), 13), prefix="rc_shortcut/")
    rows, count = class_token_rows(ops, FEATURE_NAME, cut.tokens.ln1, MASKS_NAME, attention,
                                   cut.shape, cut.tokens.prefix, heads)
    for n in graph.node:
        n.input[:] = [rows if i == attention.residual else i for i in n.input]
    producer = next(n for n in graph.node if OUTPUT_NAME in n.output)
    flat = "rc_shortcut/scores_rows"
    producer.output[:] = [flat if o == OUTPUT_NAME else o for o in producer.output]
    split = len(ops.nodes)
    classes = ops.dim(flat, 1)
    ops.reshape_to(flat, ops.concat([ops.const(np.array([-1], np.int64)), count, classes], 0))
    ops.nodes[-1].output[0] = OUTPUT_NAME
    index = next(i for i, n in enumerate(graph.node) if cut.tokens.ln1 in n.output)
    for offset, node in enumerate(ops.nodes[:split], 1):
        graph.node.insert(index + offset, node)
    graph.node.extend(ops.nodes[split:])
    graph.initializer.extend(ops.initializers)
    graph.input.append(onnx.helper.make_tensor_value_info(
        MASKS_NAME, onnx.TensorProto.FLOAT, [MASKS_NAME, cut.shape[0] - cut.tokens.prefix]))
    out = graph.output[0]
    del out.type.tensor_type.shape.dim[:]
    for d in ("batch", MASKS_NAME, "classes"):
        out.type.tensor_type.shape.dim.add().dim_param = d
    _prune(graph)
    return model


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes and initializers the outputs no longer read (the attention's)."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def verified_class_token_tail(model: onnx.ModelProto, cut: CutPoint,
                              sequences: onnx.ModelProto) -> onnx.ModelProto | None:
    """The shortcut ``g`` where the attention is recognised and the shortcut equals the
    masked-sequence tail ``sequences`` on random tokens and masks; else None."""
    import onnxruntime as ort

    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    if not softmax or find_attention(model, cut) is None:
        return None
    width = cut.shape[1]
    feature, masks = probe_inputs(cut.shape, cut.tokens.prefix)
    try:
        probe = copy.deepcopy(model)
        probe.graph.output.append(onnx.ValueInfoProto(name=softmax[-1].input[0]))
        heads = _session(ort, probe).run([softmax[-1].input[0]], {FEATURE_NAME: feature})[0]
        heads = heads.shape[1] if heads.ndim == 4 else 0
        if heads < 1 or width % heads:
            return None
        shortcut = class_token_tail(model, cut, heads)
        if shortcut is None:
            return None
        inputs = {FEATURE_NAME: feature, MASKS_NAME: masks}
        ours = _session(ort, shortcut).run(None, inputs)[0]
        theirs = _session(ort, sequences).run(None, inputs)[0]
    except Exception:  # noqa: BLE001 - a graph the shortcut misreads keeps the sequences
        return None
    return shortcut if close_enough(ours, theirs) else None


def _session(ort, model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
