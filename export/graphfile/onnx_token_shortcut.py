"""The class-token shortcut for an ONNX vision transformer's last block (no torch).

The ONNX twin of :func:`export.torch.token_tail.class_token_attention`: where the block
after the cut is LayerNorm → attention (one fused q|k|v ``MatMul`` by a constant (D, 3D),
a ``Softmax``, an output ``MatMul`` by a constant (D, D), its bias, a LayerScale ``Mul``
by a constant (D,)) → residual ``Add``, only the class token's row of the block is
computed for each mask row: its query is the same in every masked copy, the keys and values
of copy n are m_j·K'_j (+ b_k, which softmax drops) and m_j·V'_j + b_v with K', V' from the
unmasked LayerNorm output, so the attention output is (softmax(m ⊙ q0·K'/√d) ⊙ m)·V' + b_v.
The rest of the graph then runs on B·M sequences of one token.

The weights are read from the graph's constants, not from a trusted op pattern, so the
shortcut is accepted only when it equals the masked-sequence tail on random tokens and masks
(ONNX Runtime, f32); otherwise the caller keeps that tail.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME, OUTPUT_NAME

from ..artifact.graph_ops import GraphOps, OnnxOps, onnx_opset
from .file_cut import CutPoint


@dataclass(frozen=True)
class BlockAttention:
    """What the shortcut needs of the last block's attention, x @ W layout."""

    w_qkv: np.ndarray
    """(D, 3D): the q | k | v projections."""
    b_qkv: np.ndarray | None
    w_out: np.ndarray
    b_out: np.ndarray | None
    gamma: np.ndarray | None
    """(D,): timm's LayerScale after the output projection, or None."""
    residual: str
    """The residual Add's output (the stream after attention)."""


def find_attention(model: onnx.ModelProto, cut: CutPoint) -> BlockAttention | None:
    """The fused-qkv attention between the cut's LayerNorm output and the residual ``Add``
    onto the cut, or None where the block is not of that form."""
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
    qkv = [n for i in inputs for n in users.get(i, []) if n.op_type == "MatMul"
           and n.input[0] == i and (w := const(n.input[1])) is not None
           and w.shape == (width, 3 * width)]
    adds = [n for n in users.get(FEATURE_NAME, []) if n.op_type == "Add"]
    if len(qkv) != 1 or len(adds) != 1:
        return None
    b_qkv = _bias_after(qkv[0].output[0], users, const, 3 * width)
    residual = adds[0]
    node = producer.get(next(i for i in residual.input if i != FEATURE_NAME))
    gamma = b_out = None
    while node is not None and node.op_type in ("Transpose", "Reshape", "Mul", "Add"):
        if node.op_type == "Transpose" and not _keeps_last_axis(node):
            return None
        if node.op_type in ("Mul", "Add"):  # LayerScale, then the output projection's bias
            values = [const(i) for i in node.input if i in consts]
            if len(values) != 1 or values[0].shape != (width,) or (
                    node.op_type == "Mul" and (gamma is not None or b_out is not None)) or (
                    node.op_type == "Add" and b_out is not None):
                return None
            if node.op_type == "Mul":
                gamma = values[0]
            else:
                b_out = values[0]
        node = producer.get(next(i for i in node.input if i not in consts))
    if node is None or node.op_type not in ("MatMul", "Gemm") or node.input[1] not in consts:
        return None
    w_out = const(node.input[1])
    if node.op_type == "Gemm":  # torchvision's out_proj: A·Bᵀ + C
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 \
                or attrs.get("beta", 1.0) != 1.0 or b_out is not None:
            return None
        w_out = w_out.T if attrs.get("transB", 0) else w_out
        b_out = const(node.input[2]) if len(node.input) > 2 and node.input[2] in consts \
            else None
    if w_out.shape != (width, width) or (b_out is not None and b_out.shape != (width,)):
        return None
    return BlockAttention(const(qkv[0].input[1]), b_qkv, w_out, b_out, gamma,
                          residual.output[0])


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
    return bias[0] if len(bias) == 1 and bias[0] is not None and bias[0].shape == (size,) \
        else None


def class_token_rows(ops: GraphOps, feature, ln1, masks, attention: BlockAttention,
                     shape: tuple[int, int], prefix: int, heads: int):
    """(B·M, 1, D): the class token plus its attention output in each masked copy."""
    tokens, width = shape
    size = width // heads
    w_q, w_k, w_v = np.split(attention.w_qkv.astype(np.float32), 3, axis=1)
    b = attention.b_qkv
    rows = ops.dim(masks, 0)
    ones = ops.broadcast_to(ops.const(np.ones((1, 1), np.float32)),
                            ops.concat([rows, ops.const(np.array([prefix], np.int64))], 0))
    weights = ops.reshape(ops.concat([ones, masks], 1), [1, 1, -1, tokens])  # (1, 1, M, T)
    first = ops.slice(ln1, 0, 1, 1)
    q0 = ops.binary("matmul", first, ops.const(w_q))
    if b is not None:
        q0 = ops.binary("add", q0, ops.const(b[:width].astype(np.float32)))
    q0 = ops.transpose(ops.reshape(q0, [-1, 1, heads, size]), [0, 2, 1, 3])      # (B, H, 1, d)
    k = ops.transpose(ops.reshape(ops.binary("matmul", ln1, ops.const(w_k)),
                                  [-1, tokens, heads, size]), [0, 2, 3, 1])       # (B, H, d, T)
    v = ops.transpose(ops.reshape(ops.binary("matmul", ln1, ops.const(w_v)),
                                  [-1, tokens, heads, size]), [0, 2, 1, 3])       # (B, H, T, d)
    scaled = ops.binary("mul", q0, ops.const(np.float32(size ** -0.5)))
    logits = ops.binary("matmul", scaled, k)                                      # (B, H, 1, T)
    attended = ops.binary("mul", ops.softmax(ops.binary("mul", logits, weights)), weights)
    out = ops.reshape(ops.transpose(ops.binary("matmul", attended, v), [0, 2, 1, 3]),
                      [0, 0, width])                                              # (B, M, D)
    if b is not None:
        out = ops.binary("add", out, ops.const(b[2 * width:].astype(np.float32)))
    out = ops.binary("matmul", out, ops.const(attention.w_out.astype(np.float32)))
    if attention.b_out is not None:
        out = ops.binary("add", out, ops.const(attention.b_out.astype(np.float32)))
    if attention.gamma is not None:
        out = ops.binary("mul", out, ops.const(attention.gamma.astype(np.float32)))
    summed = ops.binary("add", ops.slice(feature, 0, 1, 1), out)                   # (B, M, D)
    return ops.reshape(summed, [-1, 1, width]), rows


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
    rng = np.random.default_rng(0)
    tokens, width = cut.shape
    feature = rng.standard_normal((2, tokens, width)).astype(np.float32)
    masks = rng.uniform(size=(3, tokens - cut.tokens.prefix)).astype(np.float32)
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
    scale = max(1.0, float(np.abs(theirs).max()))
    return shortcut if ours.shape == theirs.shape and \
        np.abs(ours - theirs).max() <= 1e-4 * scale else None


def _session(ort, model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
