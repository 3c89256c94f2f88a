"""Cut an OpenVINO IR classifier into ``f`` and ``g`` with the OpenVINO Python API (no torch).

``f`` ends at the cut node's output; ``g`` starts at a new Parameter that replaces it.
Both are saved as IR with f32 weights. The map cuts are found here, the token cuts by
:mod:`.ir_tokens`; both read the graph (:class:`~.ir_graph.IrGraph`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from reciprocam_ir.artifact import (
    FEATURE_NAME,
    INPUT_NAME,
    MASKS_NAME,
    OUTPUT_NAME,
    POOLED_NAME,
)
from reciprocam_ir.messages import first_line

from ..errors import ExportError
from ..input_size import InputSize
from .file_cut import CutPoint, find_cut
from .ir_graph import F32_CONFIG, IrGraph, key, layout_op, reads_batch_only
from .ir_token_shortcut import class_token_tail, verified
from .ir_tokens import find_token_cuts, masked_sequences
from .layouts import NCHW, infer_layouts, layout_problem, transposed


def whole_map_average(node: ov.Node, shape: ov.PartialShape) -> bool:
    """An unpadded ``AvgPool`` whose kernel covers the whole (h, w) map: a global pool."""
    if node.get_type_name() != "AvgPool" or shape.rank.get_length() != 4 \
            or shape[2].is_dynamic or shape[3].is_dynamic:
        return False
    attrs = node.get_attributes()
    unpadded = not any(attrs.get("pads_begin", ())) and not any(attrs.get("pads_end", ())) \
        and str(attrs.get("auto_pad", "explicit")).lower() in ("explicit", "valid", "notset")
    size = [shape[2].get_length(), shape[3].get_length()]
    return unpadded and list(attrs.get("kernel", ())) == size


class IrCutter(IrGraph):
    """An OpenVINO IR classifier file with its valid cuts (maps and tokens, in graph order),
    and ``f``/``g`` written at one of them."""

    def __init__(self, path: str | Path, size: InputSize | None = None,
                 convert: bool = False) -> None:
        """Read ``path`` (IR, or with ``convert`` any file ``ov.convert_model`` reads)."""
        super().__init__(path, size, convert)
        self.class_token_shortcut = True
        """Whether a ViT's ``g`` may be the class-token shortcut (else the masked sequences)."""
        self.token_tail: str | None = None
        """The tail the last :meth:`write` of a token cut chose."""
        ordered, result = self.ordered, self.result
        four_d = [key(out) for node in ordered for out in node.outputs()
                  if out.get_partial_shape().rank.is_static
                  and out.get_partial_shape().rank.get_length() == 4]
        (param,) = self.model.get_parameters()
        layouts = infer_layouts([layout_op(node) for node in ordered], four_d,
                                {key(param.output(0)): self.input.layout})
        self.cuts: list[CutPoint] = []
        self.misplaced: list[tuple[CutPoint, str]] = []
        self._outputs: dict[str, tuple[int, int]] = {}
        positions: dict[str, int] = {}
        for position, node in enumerate(ordered):
            if node.get_instance_id() not in self.reads_input or node.get_type_name() in (
                    "Result", "Parameter"):
                continue
            name = self.names[node.get_instance_id()]
            for out in node.outputs():
                ps = out.get_partial_shape()
                if (out.get_element_type() != ov.Type.f32 or ps.rank.is_dynamic
                        or ps.rank.get_length() != 4 or any(d.is_dynamic for d in list(ps)[1:])):
                    continue
                c, h, w = (d.get_length() for d in list(ps)[1:])
                if min(h, w) < 2 or not self.all_paths_through(out, result):
                    continue
                cut_name = name if out.get_index() == 0 else f"{name}:{out.get_index()}"
                point = CutPoint(cut_name, (c, h, w), tuple(sorted(out.get_names())))
                problem = layout_problem(layouts.get(key(out)))
                if problem is not None:
                    self.misplaced.append((point, problem))
                    continue
                self._outputs[cut_name] = (position, out.get_index())
                positions[cut_name] = position
                self.cuts.append(point)
        tokens, refused = find_token_cuts(self)
        for point, position, index in tokens:
            self._outputs[point.name] = (position, index)
            positions[point.name] = position
        self.cuts = sorted(self.cuts + [p for p, _, _ in tokens], key=lambda c: positions[c.name])
        self.misplaced += refused

    def find(self, layer: str | None) -> CutPoint:
        """The named cut (node or tensor name), or the default (last spatial) cut."""
        return find_cut(self.source, self.cuts, layer, self.known, self.misplaced)

    def _copy(self, cut: CutPoint) -> tuple[ov.Model, ov.Output, ov.Output]:
        """A fresh copy of the model, the cut output in it, and its scores output.

        The cut node is found by its position in the (deterministic) topological order, not by
        its friendly name, which OpenVINO does not keep unique.
        """
        model = self.model.clone()
        position, index = self._outputs[cut.name]
        original = self.model.get_ordered_ops()[position]
        node = model.get_ordered_ops()[position]
        if (node.get_type_name(), node.get_friendly_name()) != (
                original.get_type_name(), original.get_friendly_name()):
            raise ExportError(f"{self.source}: cannot find the cut '{cut.name}' in a copy of "
                              "the graph")
        return model, node.output(index), model.get_results()[0].input_value(0)

    def feature(self, x: np.ndarray, cut: CutPoint) -> np.ndarray:
        """The original graph's output at ``cut`` on ``x`` with OpenVINO in f32."""
        model, feature, _ = self._copy(cut)
        try:
            compiled = self.core.compile_model(
                ov.Model([feature], model.get_parameters(), "feature"), "CPU", F32_CONFIG)
            return np.asarray(compiled({0: x})[0], np.float32)
        except RuntimeError as exc:
            raise ExportError(f"{self.source}: OpenVINO cannot run the graph "
                              f"({first_line(exc)})") from None

    def pooled_start(self, feature: ov.Output) -> tuple[ov.Output, list[int]] | None:
        """The global average pool that alone reads ``feature``, if ``g`` starts so.

        Returns its output and the shape a (B, C) vector takes to stand for it; the pool may
        come after Transposes (a channels-last head).
        """
        value, layout = feature, NCHW
        while True:
            users = [t.get_node() for t in value.get_target_inputs()]
            if len(users) != 1:
                return None
            node = users[0]
            op = layout_op(node)
            if op.kind != "Transpose" or op.perm is None or len(op.perm) != 4:
                break
            value, layout = node.output(0), transposed(layout, op.perm)
        channels = feature.get_partial_shape()[1].get_length()
        if layout == NCHW and whole_map_average(node, feature.get_partial_shape()):
            return node.output(0), [-1, channels, 1, 1]
        if op.kind != "ReduceMean" or op.axes != tuple(sorted(
                (layout.index("H"), layout.index("W")))):
            return None
        if node.get_attributes().get("keep_dims"):
            return node.output(0), [-1 if a == "N" else channels if a == "C" else 1
                                    for a in layout]
        return (node.output(0), [-1, channels]) if layout.index("N") < layout.index("C") \
            else None

    def _shortcut(self, cut: CutPoint, keep_softmax: bool) -> ov.Model | None:
        """A token cut's ``g`` by the class-token shortcut (:mod:`.ir_token_shortcut`), or
        None where the last block is not of its form."""
        model, feature, scores = self._copy(cut)
        scores = self.scores(scores, keep_softmax)
        _rebind_batch_reads(scores, feature)
        try:
            return class_token_tail(model, feature, scores, cut, model.get_ordered_ops())
        except RuntimeError:  # shapes that do not hold for one-token sequences
            return None

    def write(self, cut: CutPoint, folder: Path, keep_softmax: bool) -> dict[str, Path]:
        """Write ``f.xml``, ``g.xml`` (and ``g_pooled.xml`` after a GAP) into ``folder``;
        a token cut's ``g`` is the class-token shortcut where it applies and equals the
        masked-sequence tail (:mod:`.ir_tokens`), else that tail."""
        model, feature, scores = self._copy(cut)
        f = ov.Model([feature], model.get_parameters(), "f")
        models = {"f": f}
        _names(f, INPUT_NAME, FEATURE_NAME)

        model, feature, scores = self._copy(cut)
        if cut.tokens is not None:
            scores = self.scores(scores, keep_softmax)
            _rebind_batch_reads(scores, feature)  # then read the masked copies, as the rest
            params, shaped, _ = masked_sequences(feature, scores, cut, model.get_ordered_ops())
            models["g"] = ov.Model([shaped], params, "g")
            self.token_tail = "sequences"
            if self.class_token_shortcut:
                shortcut = self._shortcut(cut, keep_softmax)
                if verified(shortcut, models["g"], cut):
                    models["g"], self.token_tail = shortcut, "class_token"
            models["g"].input(1).get_tensor().set_names({MASKS_NAME})
        else:
            param = ops.parameter([-1, *cut.shape], ov.Type.f32, name=FEATURE_NAME)
            for target in list(feature.get_target_inputs()):
                target.replace_source_output(param.output(0))
            _rebind_batch_reads(scores, param.output(0))
            models["g"] = ov.Model([self.scores(scores, keep_softmax)], [param], "g")

        model, feature, scores = self._copy(cut)
        c = cut.shape[0]
        pooled = self.pooled_start(feature) if cut.tokens is None else None
        if pooled is not None:
            vector = ops.parameter([-1, c], ov.Type.f32, name=POOLED_NAME)
            shaped = ops.reshape(vector, ops.constant(np.array(pooled[1], np.int64)), False)
            for target in list(pooled[0].get_target_inputs()):
                target.replace_source_output(shaped.output(0))
            _rebind_batch_reads(scores, shaped.output(0))
            models["g_pooled"] = ov.Model([self.scores(scores, keep_softmax)], [vector],
                                          "g_pooled")
        files = {}
        for role, m in models.items():
            if role != "f":
                _names(m, FEATURE_NAME if role == "g" else POOLED_NAME, OUTPUT_NAME)
            try:
                m.validate_nodes_and_infer_types()
                files[role] = folder / f"{role}.xml"
                ov.save_model(m, str(files[role]), compress_to_fp16=False)
            except RuntimeError as exc:
                raise ExportError(f"{self.source}: cannot build {role} at '{cut.name}' "
                                  f"({first_line(exc)})") from None
        return files


def _rebind_batch_reads(scores: ov.Output, start: ov.Output) -> None:
    """Point the batch-size reads before ``scores`` at ``start`` (a tensor with the batch).

    Reads of tensors computed from ``start`` stay: their first axis need not be the batch
    (attention's (T, B, D) query)."""
    after, stack = set(), [start.get_node()]
    while stack:
        for out in stack.pop().outputs():
            for target in out.get_target_inputs():
                node = target.get_node()
                if node.get_instance_id() not in after:
                    after.add(node.get_instance_id())
                    stack.append(node)
    seen, stack = {key(start)}, [scores]
    while stack:
        node = stack.pop().get_node()
        if reads_batch_only(node):
            if node.input_value(0).get_node().get_instance_id() not in after:
                node.input(0).replace_source_output(start)
            continue
        for v in node.input_values():
            if key(v) not in seen:
                seen.add(key(v))
                stack.append(v)


def _names(model: ov.Model, input_name: str, output_name: str) -> None:
    model.input(0).get_tensor().set_names({input_name})
    model.output(0).get_tensor().set_names({output_name})
