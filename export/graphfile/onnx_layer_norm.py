"""LayerNorms over the last axis in an ONNX graph, fused or decomposed (no torch).

From opset 17, torch exports ``nn.LayerNorm`` as one ``LayerNormalization``; below it,
``torch.onnx.export`` writes it out (opsets 13 and 14 alike) as

    m = ReduceMean(x) → d = Sub(x, m) → Pow(d, 2) → ReduceMean → Add(·, eps) → Sqrt
      → Div(d, ·) → Mul(·, gamma) → Add(·, beta)

with both means over the last axis and kept dims. :func:`layer_norms` finds either form;
the decomposed one only where its intermediate tensors are read by nothing else, so that
re-wiring its input re-wires the whole LayerNorm and nothing beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class LayerNorm:
    """One LayerNorm of the graph: it normalises ``input`` over its last axis."""

    input: str
    gamma: np.ndarray | None
    """(D,), or None (a unit scale); ``beta`` likewise (a zero shift)."""
    beta: np.ndarray | None
    epsilon: float
    output: str
    readers: tuple[str, ...]
    """The first output names of its nodes that read ``input``."""


class _Index:
    """The readers, constants and known ranks of a graph's tensors."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.users.setdefault(name, []).append(node)
        self.consts = {i.name: i for i in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute \
                    and node.attribute[0].name == "value":
                self.consts[node.output[0]] = node.attribute[0].t
            elif node.op_type == "Identity" and node.input[0] in self.consts:
                self.consts[node.output[0]] = self.consts[node.input[0]]  # a shared constant
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim)
                      for v in (*graph.input, *graph.value_info, *graph.output)
                      if v.type.tensor_type.HasField("shape")}
        self.outputs = {o.name for o in graph.output}

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.consts[name]) if name in self.consts else None

    def sole_user(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        users = self.users.get(tensor, [])
        if len(users) != 1 or users[0].op_type != op_type or tensor in self.outputs:
            return None
        return users[0]

    def other_const(self, node: onnx.NodeProto, tensor: str) -> np.ndarray | None:
        """The constant ``node`` combines ``tensor`` with (its other input)."""
        others = [i for i in node.input if i != tensor]
        return self.const(others[0]) if len(node.input) == 2 and len(others) == 1 else None

    def last_axis(self, axes: list[int] | None, tensor: str) -> bool:
        """Whether ``axes`` name only the last axis of ``tensor``."""
        if axes is None or len(axes) != 1:
            return False
        rank = self.ranks.get(tensor)
        return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _mean_over_last(index: _Index, node: onnx.NodeProto, tensor: str) -> bool:
    """A ``ReduceMean`` of ``tensor`` over its last axis, the dims kept."""
    if node.op_type != "ReduceMean" or node.input[0] != tensor:
        return False
    attrs = _attrs(node)
    axes = attrs.get("axes")
    if len(node.input) > 1 and node.input[1]:  # opset 18: the axes are an input
        const = index.const(node.input[1])
        axes = None if const is None else const.ravel().tolist()
    return attrs.get("keepdims", 1) == 1 and index.last_axis(axes, tensor)


def _vector(value: np.ndarray | None) -> np.ndarray | None:
    """A constant that acts per channel on the last axis, as (D,)."""
    if value is None or value.ndim == 0 or any(d != 1 for d in value.shape[:-1]):
        return None
    return value.reshape(-1)


def _affine(index: _Index, tensor: str) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """The per-channel ``Mul`` then ``Add`` by constants after ``tensor``, where present."""
    gamma = beta = None
    mul = index.sole_user(tensor, "Mul")
    if mul is not None and (vector := _vector(index.other_const(mul, tensor))) is not None:
        gamma, tensor = vector, mul.output[0]
    add = index.sole_user(tensor, "Add")
    if add is not None and (vector := _vector(index.other_const(add, tensor))) is not None:
        beta, tensor = vector, add.output[0]
    return gamma, beta, tensor


def _fused(index: _Index, node: onnx.NodeProto) -> LayerNorm | None:
    attrs = _attrs(node)
    x = node.input[0]
    if not index.last_axis([attrs.get("axis", -1)], x) or len(node.output) < 1:
        return None
    gamma = index.const(node.input[1]) if len(node.input) > 1 else None
    beta = index.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return LayerNorm(x, None if gamma is None else gamma.reshape(-1),
                     None if beta is None else beta.reshape(-1),
                     float(attrs.get("epsilon", 1e-5)), node.output[0],
                     (node.output[0],))


def _decomposed(index: _Index, mean: onnx.NodeProto) -> LayerNorm | None:
    """The LayerNorm whose first ``ReduceMean`` is ``mean``, else None."""
    x = mean.input[0]
    if not _mean_over_last(index, mean, x):
        return None
    sub = index.sole_user(mean.output[0], "Sub")
    if sub is None or list(sub.input) != [x, mean.output[0]]:
        return None
    centred = sub.output[0]
    users = index.users.get(centred, [])
    square = next((n for n in users if n.op_type == "Pow"), None)
    div = next((n for n in users if n.op_type == "Div"), None)
    if len(users) != 2 or square is None or div is None or centred in index.outputs \
            or list(square.input[:1]) != [centred] or list(div.input[:1]) != [centred]:
        return None
    exponent = index.other_const(square, centred)
    if exponent is None or exponent.size != 1 or float(exponent.ravel()[0]) != 2.0:
        return None
    variance = index.sole_user(square.output[0], "ReduceMean")
    if variance is None or not _mean_over_last(index, variance, square.output[0]):
        return None
    add = index.sole_user(variance.output[0], "Add")
    eps = index.other_const(add, variance.output[0]) if add is not None else None
    if eps is None or eps.size != 1:
        return None
    sqrt = index.sole_user(add.output[0], "Sqrt")
    if sqrt is None or list(div.input) != [centred, sqrt.output[0]] \
            or index.sole_user(sqrt.output[0], "Div") is not div:
        return None
    gamma, beta, out = _affine(index, div.output[0])
    return LayerNorm(x, gamma, beta, float(eps.ravel()[0]), out,
                     (mean.output[0], sub.output[0]))


def layer_norms(graph: onnx.GraphProto) -> list[LayerNorm]:
    """The graph's LayerNorms over the last axis, fused or decomposed, in graph order."""
    index = _Index(graph)
    found = []
    for node in graph.node:
        if node.op_type == "LayerNormalization":
            norm = _fused(index, node)
        elif node.op_type == "ReduceMean":
            norm = _decomposed(index, node)
        else:
            continue
        if norm is not None:
            found.append(norm)
    return found


def reads_input(node: onnx.NodeProto, norm: LayerNorm) -> bool:
    """Whether ``node`` is one of ``norm``'s nodes that read its input."""
    return bool(node.output) and node.output[0] in norm.readers
