"""Cut an ONNX classifier graph into ``f`` and ``g`` with onnx's own tooling (no torch).

The map cuts are found here, the token cuts by :mod:`.onnx_tokens`; both read the graph
(:class:`~.onnx_graph.OnnxGraph`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from reciprocam_ir.artifact import FEATURE_NAME, INPUT_NAME, OUTPUT_NAME, POOLED_NAME
from reciprocam_ir.messages import first_line

from ..artifact.graph_files import BATCH
from ..errors import ExportError
from ..input_size import InputSize
from .file_cut import CutPoint, find_cut
from .layouts import NCHW, infer_layouts, layout_problem, transposed
from .onnx_graph import OnnxGraph
from .onnx_token_shortcut import verified_class_token_tail
from .onnx_tokens import find_token_cuts, masked_sequences


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` everywhere in ``graph`` (moving a clash aside)."""
    if old == new:
        return
    names = {n for node in graph.node for n in (*node.input, *node.output)}
    names |= {v.name for v in (*graph.input, *graph.output, *graph.value_info)}
    if new in names:
        _rename(graph, new, f"{new}_orig")
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _set_batch(value: onnx.ValueInfoProto) -> None:
    dim = value.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = BATCH


def whole_map_average(node: onnx.NodeProto, size: tuple[int, ...]) -> bool:
    """An unpadded ``AveragePool`` whose kernel covers the whole (h, w) map: a global pool."""
    if node.op_type != "AveragePool":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    unpadded = attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET", "VALID") \
        and not any(attrs.get("pads", ()))
    return unpadded and tuple(attrs.get("kernel_shape", ())) == tuple(size)


class OnnxCutter(OnnxGraph):
    """An ONNX classifier file with its valid cuts (maps and tokens, in graph order), and
    ``f``/``g`` written at one of them."""

    def __init__(self, path: str | Path, size: InputSize | None = None) -> None:
        super().__init__(path, size)
        self.class_token_shortcut = True
        """Whether a ViT's ``g`` may be the class-token shortcut (else the masked sequences)."""
        self.token_tail: str | None = None
        """The tail the last :meth:`write` of a token cut chose."""
        graph = self.model.graph
        shapes = self.maps
        layouts = infer_layouts([self.layout_op(n) for n in graph.node], [*shapes, self.input.name],
                                {self.input.name: self.input.layout})
        self.cuts: list[CutPoint] = []
        self.misplaced: list[tuple[CutPoint, str]] = []
        for node in graph.node:
            for out in node.output:
                dims = shapes.get(out)
                if dims is None or min(dims[2:]) < 2 or not self.all_paths_through(out):
                    continue
                aliases = (node.name,) if node.name and len(node.output) == 1 else ()
                point = CutPoint(out, (dims[1], dims[2], dims[3]), aliases)
                problem = layout_problem(layouts.get(out))
                if problem is None:
                    self.cuts.append(point)
                else:
                    self.misplaced.append((point, problem))
        order = {out: i for i, node in enumerate(graph.node) for out in node.output}
        tokens, refused = find_token_cuts(self)
        self.cuts = sorted(self.cuts + tokens, key=lambda c: order[c.name])
        self.misplaced += refused

    def find(self, layer: str | None) -> CutPoint:
        """The named cut (tensor or node name), or the default (last spatial) cut."""
        return find_cut(self.source, self.cuts, layer, self.known, self.misplaced)

    def pooled_start(self, cut: CutPoint) -> tuple[str, list[int]] | None:
        """The global average pool that alone reads ``cut``, if ``g`` starts so.

        Returns its output and the shape a (B, C) vector takes to stand for it. The pool may
        come after Transposes (a channels-last head: ``ReduceMean`` over axes 1, 2).
        """
        name, layout = cut.name, NCHW
        while True:
            users = [n for n in self.model.graph.node if name in n.input]
            if len(users) != 1:
                return None
            node = users[0]
            op = self.layout_op(node)
            if node.op_type != "Transpose" or op.perm is None or len(op.perm) != 4:
                break
            name, layout = node.output[0], transposed(layout, op.perm)
        channels = cut.shape[0]
        kept = [-1 if a == "N" else channels if a == "C" else 1 for a in layout]
        if layout == NCHW and (node.op_type == "GlobalAveragePool"
                               or whole_map_average(node, cut.shape[1:])):
            return node.output[0], kept
        if node.op_type != "ReduceMean" or op.axes != tuple(sorted(
                (layout.index("H"), layout.index("W")))):
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("keepdims", 1) == 1:
            return node.output[0], kept
        return (node.output[0], [-1, channels]) if layout.index("N") < layout.index("C") \
            else None

    def write(self, cut: CutPoint, folder: Path, keep_softmax: bool) -> dict[str, Path]:
        """Write ``f.onnx``, ``g.onnx`` (and ``g_pooled.onnx`` after a GAP) into ``folder``."""
        scores, source = self.scores_tensor(keep_softmax), self.scores_model(keep_softmax)
        parts = {"f": ([self.input.name], [cut.name], INPUT_NAME, FEATURE_NAME),
                 "g": ([cut.name], [scores], FEATURE_NAME, OUTPUT_NAME)}
        pooled = self.pooled_start(cut) if cut.tokens is None else None
        if pooled is not None:
            parts["g_pooled"] = ([pooled[0]], [scores], POOLED_NAME, OUTPUT_NAME)
        files = {}
        for role, (ins, outs, in_name, out_name) in parts.items():
            try:
                model = onnx.utils.Extractor(self.rebound(source, ins[0], outs[0])).extract_model(
                    ins, outs)
            except Exception as exc:
                raise ExportError(f"{self.source}: cannot extract {role} at '{cut.name}' "
                                  f"({first_line(exc)})") from None
            graph = model.graph
            del graph.value_info[:]
            _rename(graph, ins[0], in_name)
            _rename(graph, outs[0], out_name)
            if role == "g_pooled":
                _pooled_input(graph, cut.shape[0], pooled[1])
            for value, name in ((graph.input[0], ins[0]), (graph.output[0], outs[0])):
                shape = value.type.tensor_type.shape
                if not shape.dim:  # a head reshaped by a computed shape: its measured sizes
                    for size in self.scores_dims(name) or ():
                        shape.dim.add().dim_value = size or 1
                _set_batch(value)
            if role == "g" and cut.tokens is not None:
                sequences = masked_sequences(model, cut)
                model = (verified_class_token_tail(model, cut, sequences)
                         if self.class_token_shortcut else None) or sequences
                self.token_tail = "class_token" if model is not sequences else "sequences"
                graph = model.graph
            graph.name = role
            files[role] = folder / f"{role}.onnx"
            onnx.save(model, str(files[role]))
        return files


def _pooled_input(graph: onnx.GraphProto, channels: int, shape: list[int]) -> None:
    """Make the pooled input a (N, C) vector input, reshaped inside to ``shape`` (the pool's
    own output shape, such as (-1, C, 1, 1))."""
    inner = f"{POOLED_NAME}_pool"
    _rename(graph, POOLED_NAME, inner)
    graph.input.remove(next(v for v in graph.input if v.name == inner))
    graph.input.insert(0, helper.make_tensor_value_info(POOLED_NAME, TensorProto.FLOAT,
                                                        [BATCH, channels]))
    target = f"{POOLED_NAME}_shape"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array(shape, np.int64), target))
    graph.node.insert(0, helper.make_node("Reshape", [POOLED_NAME, target], [inner],
                                          name="pooled_to_pool_shape"))
