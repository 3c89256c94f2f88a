"""The few tensor operations the explain graph is made of, written into ONNX or OpenVINO.

:mod:`.explain_graph` (and a graph file's masked-sequence tail,
:mod:`export.graphfile.token_sequences`) state their computation once against
:class:`GraphOps`; the two writers below turn each call into an ONNX node (``onnx.helper``)
or an OpenVINO node (``openvino.opset13``). A value is whatever the writer uses to name a
tensor: a tensor name for ONNX, an ``ov.Output`` for OpenVINO.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

Value = Any


def onnx_opset(model: Any) -> int:
    """The default-domain opset an ONNX model imports (0 when none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


class GraphOps(ABC):
    """One graph under construction; every method adds nodes and returns the new value."""

    @abstractmethod
    def const(self, value: np.ndarray) -> Value: ...

    @abstractmethod
    def reshape(self, x: Value, shape: list[int]) -> Value: ...

    @abstractmethod
    def reshape_to(self, x: Value, shape: Value) -> Value:
        """``x`` reshaped to the int64 shape tensor ``shape`` (-1 allowed)."""

    @abstractmethod
    def transpose(self, x: Value, perm: list[int]) -> Value: ...

    @abstractmethod
    def dim(self, x: Value, axis: int) -> Value:
        """``x``'s size on ``axis`` (not negative), as a 1-element int64 tensor."""

    @abstractmethod
    def concat(self, values: list[Value], axis: int) -> Value: ...

    @abstractmethod
    def binary(self, op: str, a: Value, b: Value) -> Value:
        """``op`` one of add, sub, mul, div, matmul, greater (numpy broadcasting)."""

    @abstractmethod
    def reduce(self, op: str, x: Value, axis: int, keepdims: bool) -> Value:
        """``op`` one of mean, min, max over one axis."""

    @abstractmethod
    def top_k(self, x: Value, k: int) -> Value:
        """int64 indices of the ``k`` largest values along the last axis, largest first."""

    @abstractmethod
    def gather(self, data: Value, indices: Value) -> Value:
        """``data[indices]`` along axis 0."""

    @abstractmethod
    def gather_elements(self, data: Value, indices: Value, axis: int) -> Value: ...

    @abstractmethod
    def expand(self, x: Value, shape: list[int]) -> Value:
        """``x`` broadcast (numpy rules, both ways) with a tensor of ``shape``."""

    @abstractmethod
    def broadcast_to(self, x: Value, shape: Value) -> Value:
        """``x`` broadcast (numpy rules, one way) to the int64 shape tensor ``shape``."""

    @abstractmethod
    def slice(self, x: Value, start: int, stop: int, axis: int) -> Value: ...

    @abstractmethod
    def where(self, cond: Value, a: Value, b: Value) -> Value: ...

    @abstractmethod
    def softmax(self, x: Value) -> Value:
        """Softmax over the last axis."""


class OnnxOps(GraphOps):
    """Collects ONNX nodes and initializers for a model of opset ``opset`` (13 or later)."""

    def __init__(self, opset: int, prefix: str = "rc/") -> None:
        if opset < 13:
            raise ValueError(f"opset {opset} is too old for the explain graph (13 or later)")
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        from onnx import helper

        names = [self._name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _ints(self, values: list[int]) -> str:
        return self.const(np.asarray(values, np.int64))

    def reshape(self, x: str, shape: list[int]) -> str:
        return self.node("Reshape", [x, self._ints(shape)])

    def reshape_to(self, x: str, shape: str) -> str:
        return self.node("Reshape", [x, shape])

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.node("Transpose", [x], perm=perm)

    def dim(self, x: str, axis: int) -> str:
        shape = self.node("Shape", [x])
        return self.node("Slice", [shape, self._ints([axis]), self._ints([axis + 1])])

    def concat(self, values: list[str], axis: int) -> str:
        return self.node("Concat", values, axis=axis)

    def binary(self, op: str, a: str, b: str) -> str:
        kinds = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "matmul": "MatMul",
                 "greater": "Greater"}
        return self.node(kinds[op], [a, b])

    def reduce(self, op: str, x: str, axis: int, keepdims: bool) -> str:
        kind = {"mean": "ReduceMean", "min": "ReduceMin", "max": "ReduceMax"}[op]
        if self.opset >= 18:
            return self.node(kind, [x, self._ints([axis])], keepdims=int(keepdims))
        return self.node(kind, [x], axes=[axis], keepdims=int(keepdims))

    def top_k(self, x: str, k: int) -> str:
        _, indices = self.node("TopK", [x, self._ints([k])], outputs=2, axis=-1, largest=1,
                               sorted=1)
        return indices

    def gather(self, data: str, indices: str) -> str:
        return self.node("Gather", [data, indices], axis=0)

    def gather_elements(self, data: str, indices: str, axis: int) -> str:
        return self.node("GatherElements", [data, indices], axis=axis)

    def expand(self, x: str, shape: list[int]) -> str:
        return self.node("Expand", [x, self._ints(shape)])

    def broadcast_to(self, x: str, shape: str) -> str:
        return self.node("Expand", [x, shape])

    def slice(self, x: str, start: int, stop: int, axis: int) -> str:
        return self.node("Slice", [x, self._ints([start]), self._ints([stop]),
                                   self._ints([axis])])

    def where(self, cond: str, a: str, b: str) -> str:
        return self.node("Where", [cond, a, b])

    def softmax(self, x: str) -> str:
        return self.node("Softmax", [x], axis=-1)


class OpenVINOOps(GraphOps):
    """Builds OpenVINO nodes (opset 13) directly on ``ov.Output`` values."""

    def __init__(self) -> None:
        import openvino.opset13 as ops

        self.ops = ops

    def const(self, value: np.ndarray) -> Any:
        return self.ops.constant(np.asarray(value)).output(0)

    def reshape(self, x: Any, shape: list[int]) -> Any:
        return self.ops.reshape(x, self.const(np.asarray(shape, np.int64)), False).output(0)

    def reshape_to(self, x: Any, shape: Any) -> Any:
        return self.ops.reshape(x, shape, False).output(0)

    def transpose(self, x: Any, perm: list[int]) -> Any:
        return self.ops.transpose(x, self.const(np.asarray(perm, np.int64))).output(0)

    def dim(self, x: Any, axis: int) -> Any:
        shape = self.ops.shape_of(x, "i64")
        return self.ops.gather(shape, self.const(np.asarray([axis], np.int64)),
                               self.const(np.asarray(0, np.int64))).output(0)

    def concat(self, values: list[Any], axis: int) -> Any:
        return self.ops.concat(values, axis).output(0)

    def binary(self, op: str, a: Any, b: Any) -> Any:
        if op == "matmul":
            return self.ops.matmul(a, b, False, False).output(0)
        kinds = {"add": self.ops.add, "sub": self.ops.subtract, "mul": self.ops.multiply,
                 "div": self.ops.divide, "greater": self.ops.greater}
        return kinds[op](a, b).output(0)

    def reduce(self, op: str, x: Any, axis: int, keepdims: bool) -> Any:
        kind = {"mean": self.ops.reduce_mean, "min": self.ops.reduce_min,
                "max": self.ops.reduce_max}[op]
        return kind(x, self.const(np.asarray([axis], np.int64)), keepdims).output(0)

    def top_k(self, x: Any, k: int) -> Any:
        node = self.ops.topk(x, self.const(np.asarray(k, np.int64)), -1, "max", "value",
                             index_element_type="i64", stable=True)
        return node.output(1)

    def gather(self, data: Any, indices: Any) -> Any:
        return self.ops.gather(data, indices, self.const(np.asarray(0, np.int64))).output(0)

    def gather_elements(self, data: Any, indices: Any, axis: int) -> Any:
        return self.ops.gather_elements(data, indices, axis).output(0)

    def expand(self, x: Any, shape: list[int]) -> Any:
        return self.ops.broadcast(x, self.const(np.asarray(shape, np.int64)),
                                  broadcast_spec="BIDIRECTIONAL").output(0)

    def broadcast_to(self, x: Any, shape: Any) -> Any:
        return self.ops.broadcast(x, shape).output(0)

    def slice(self, x: Any, start: int, stop: int, axis: int) -> Any:
        one = [np.asarray([v], np.int64) for v in (start, stop, 1, axis)]
        return self.ops.slice(x, *(self.const(v) for v in one)).output(0)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.ops.select(cond, a, b).output(0)

    def softmax(self, x: Any) -> Any:
        return self.ops.softmax(x, -1).output(0)
