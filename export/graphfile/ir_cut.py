"""Cut an OpenVINO IR classifier into ``f`` and ``g`` with the OpenVINO Python API (no torch).

``f`` ends at the cut node's output; ``g`` starts at a new Parameter that replaces it.
Both are saved as IR with f32 weights.
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
from .file_cut import CutPoint, ImageInput, find_cut, image_input, softmax_over_classes
from .ir_tokens import find_token_cuts, masked_sequences
from .layouts import NCHW, REDUCTIONS, Op, infer_layouts, layout_problem, transposed

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
PASS_ON = ("Identity", "Reshape", "Squeeze", "Unsqueeze")


def _key(output: ov.Output) -> tuple[int, int]:
    return output.get_node().get_instance_id(), output.get_index()


class IrGraph:
    """An OpenVINO IR classifier file: its image input, valid cuts, and ``f``/``g``."""

    def __init__(self, path: str | Path, size: InputSize | None = None,
                 convert: bool = False) -> None:
        """Read ``path`` (IR, or with ``convert`` any file ``ov.convert_model`` reads)."""
        self.path = Path(path)
        self.source = str(path)
        if not self.path.is_file():
            raise ExportError(f"model file '{path}' not found")
        self.core = ov.Core()
        try:
            model = ov.convert_model(str(self.path)) if convert \
                else self.core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO's frontends raise several kinds
            what = "OpenVINO cannot read the model" if convert else \
                "not a readable OpenVINO IR model"
            raise ExportError(f"{path}: {what} ({first_line(exc)})") from None
        params = model.get_parameters()
        names = [p.get_friendly_name() for p in params]
        dims = None
        if len(params) == 1:
            ps = params[0].get_output_partial_shape(0)
            if ps.rank.is_static:
                dims = [d.get_length() if d.is_static else None for d in ps]
        is_float = len(params) == 1 and params[0].get_element_type() == ov.Type.f32
        self.input: ImageInput = image_input(self.source, names, dims, is_float, size)
        if len(model.outputs) != 1:
            raise ExportError(f"{path}: graph has {len(model.outputs)} outputs; expected one "
                              "2-D tensor of class scores (batch, classes)")
        shape = ov.PartialShape([-1, *self.input.shape()[1:]])
        try:
            model.reshape({model.input(0): shape})
        except RuntimeError as exc:
            raise ExportError(f"{path}: cannot give the graph a dynamic batch axis "
                              f"({first_line(exc)})") from None
        self.model = model
        self.metadata = _metadata(model)
        self._analyse()

    def _analyse(self) -> None:
        ordered = self.model.get_ordered_ops()
        (param,) = self.model.get_parameters()
        reads_input = {param.get_instance_id()}
        for node in ordered:
            if any(v.get_node().get_instance_id() in reads_input for v in node.input_values()):
                reads_input.add(node.get_instance_id())
        result = self.model.get_results()[0]
        self.result_input = result.input_value(0)
        out_rank = self.result_input.get_partial_shape().rank
        if out_rank.is_static and out_rank.get_length() != 2:
            raise ExportError(f"{self.source}: output has rank {out_rank.get_length()}; "
                              "expected one 2-D tensor of class scores (batch, classes)")
        four_d = [_key(out) for node in ordered for out in node.outputs()
                  if out.get_partial_shape().rank.is_static
                  and out.get_partial_shape().rank.get_length() == 4]
        layouts = infer_layouts([_op(node) for node in ordered], four_d,
                                {_key(param.output(0)): self.input.layout})
        self.known: set[str] = set()
        self.cuts: list[CutPoint] = []
        self.misplaced: list[tuple[CutPoint, str]] = []
        self._outputs: dict[str, tuple[int, int]] = {}
        seen_names: dict[str, int] = {}
        names: dict[int, str] = {}
        positions: dict[str, int] = {}
        for position, node in enumerate(ordered):
            name = node.get_friendly_name()
            self.known.add(name)
            for out in node.outputs():
                self.known.update(out.get_names())
            seen_names[name] = seen_names.get(name, 0) + 1
            if seen_names[name] > 1:  # friendly names need not be unique
                name = f"{name}#{seen_names[name]}"
                self.known.add(name)
            names[node.get_instance_id()] = name
            if node.get_instance_id() not in reads_input or node.get_type_name() in (
                    "Result", "Parameter"):
                continue
            for out in node.outputs():
                ps = out.get_partial_shape()
                if (out.get_element_type() != ov.Type.f32 or ps.rank.is_dynamic
                        or ps.rank.get_length() != 4 or any(d.is_dynamic for d in list(ps)[1:])):
                    continue
                c, h, w = (d.get_length() for d in list(ps)[1:])
                if min(h, w) < 2 or not self._all_paths_through(out, result):
                    continue
                cut_name = name if out.get_index() == 0 else f"{name}:{out.get_index()}"
                point = CutPoint(cut_name, (c, h, w), tuple(sorted(out.get_names())))
                problem = layout_problem(layouts.get(_key(out)))
                if problem is not None:
                    self.misplaced.append((point, problem))
                    continue
                self._outputs[cut_name] = (position, out.get_index())
                positions[cut_name] = position
                self.cuts.append(point)
        tokens, refused = find_token_cuts(self, ordered, names, reads_input, result)
        for point, position, index in tokens:
            self._outputs[point.name] = (position, index)
            positions[point.name] = position
        self.cuts = sorted(self.cuts + [p for p, _, _ in tokens], key=lambda c: positions[c.name])
        self.misplaced += refused
        softmax = _final_softmax(self.result_input)
        self.softmax_input = softmax.input_value(0) if softmax is not None else None

    def _all_paths_through(self, cut: ov.Output, result: ov.Node) -> bool:
        """Whether the result reads the Parameter only through ``cut``."""
        seen, stack = {_key(cut)}, [result.input_value(0)]
        while stack:
            value = stack.pop()
            node = value.get_node()
            if node.get_type_name() == "Parameter":
                return False
            if _reads_batch_only(node):
                continue
            for v in node.input_values():
                if _key(v) not in seen:
                    seen.add(_key(v))
                    stack.append(v)
        return True

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

    def _scores(self, value: ov.Output, keep_softmax: bool) -> ov.Output:
        """What ``g`` outputs in the graph of ``value`` (the scores): the logits by default.

        ``g`` ends at the final Softmax's input when that already is the (N, classes) f32
        scores; otherwise (a (N, C, 1, 1) Softmax then a reshape, say) it is bypassed.
        """
        softmax = _final_softmax(value) if not keep_softmax else None
        if softmax is None:
            return value
        logits = softmax.input_value(0)
        rank = logits.get_partial_shape().rank
        if logits.get_element_type() == ov.Type.f32 and rank.is_static and rank.get_length() == 2:
            return logits
        for target in list(softmax.output(0).get_target_inputs()):
            target.replace_source_output(logits)
        return value

    def reference(self, x: np.ndarray, keep_softmax: bool) -> np.ndarray:
        """The original graph's scores on ``x`` with OpenVINO in f32 (pre-Softmax by default)."""
        model = self.model.clone()
        scores = self._scores(model.get_results()[0].input_value(0), keep_softmax)
        ref = ov.Model([scores], model.get_parameters(), "reference")
        try:
            out = self.core.compile_model(ref, "CPU", F32_CONFIG)({0: x})[0]
        except RuntimeError as exc:
            raise ExportError(f"{self.source}: OpenVINO cannot run the graph "
                              f"({first_line(exc)})") from None
        return np.asarray(out, np.float32)

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
            op = _op(node)
            if op.kind != "Transpose" or op.perm is None or len(op.perm) != 4:
                break
            value, layout = node.output(0), transposed(layout, op.perm)
        if op.kind != "ReduceMean" or op.axes != tuple(sorted(
                (layout.index("H"), layout.index("W")))):
            return None
        channels = feature.get_partial_shape()[1].get_length()
        if node.get_attributes().get("keep_dims"):
            return node.output(0), [-1 if a == "N" else channels if a == "C" else 1
                                    for a in layout]
        return (node.output(0), [-1, channels]) if layout.index("N") < layout.index("C") \
            else None

    def write(self, cut: CutPoint, folder: Path, keep_softmax: bool) -> dict[str, Path]:
        """Write ``f.xml``, ``g.xml`` (and ``g_pooled.xml`` after a GAP) into ``folder``;
        a token cut's ``g`` is the masked-sequence tail (:mod:`.ir_tokens`)."""
        model, feature, scores = self._copy(cut)
        f = ov.Model([feature], model.get_parameters(), "f")
        models = {"f": f}
        _names(f, INPUT_NAME, FEATURE_NAME)

        model, feature, scores = self._copy(cut)
        if cut.tokens is not None:
            scores = self._scores(scores, keep_softmax)
            _rebind_batch_reads(scores, feature)  # then read the masked copies, as the rest
            params, shaped, _ = masked_sequences(feature, scores, cut, model.get_ordered_ops())
            models["g"] = ov.Model([shaped], params, "g")
            models["g"].input(1).get_tensor().set_names({MASKS_NAME})
        else:
            param = ops.parameter([-1, *cut.shape], ov.Type.f32, name=FEATURE_NAME)
            for target in list(feature.get_target_inputs()):
                target.replace_source_output(param.output(0))
            _rebind_batch_reads(scores, param.output(0))
            models["g"] = ov.Model([self._scores(scores, keep_softmax)], [param], "g")

        model, feature, scores = self._copy(cut)
        c = cut.shape[0]
        pooled = self.pooled_start(feature) if cut.tokens is None else None
        if pooled is not None:
            vector = ops.parameter([-1, c], ov.Type.f32, name=POOLED_NAME)
            shaped = ops.reshape(vector, ops.constant(np.array(pooled[1], np.int64)), False)
            for target in list(pooled[0].get_target_inputs()):
                target.replace_source_output(shaped.output(0))
            _rebind_batch_reads(scores, shaped.output(0))
            models["g_pooled"] = ov.Model([self._scores(scores, keep_softmax)], [vector],
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


def _metadata(model: ov.Model) -> dict[str, str]:
    """The text in ``rt_info`` that may name the classes.

    ``model_info/labels`` holds space-separated names (OpenVINO Model API, YOLO exporters);
    ``framework/*`` holds an ONNX model's ``metadata_props`` after ``ov.convert_model``.
    """
    found = {}
    if model.has_rt_info(["model_info", "labels"]):
        names = model.get_rt_info(["model_info", "labels"]).astype(str).split()
        found["model_info/labels"] = "\n".join(names)
    if model.has_rt_info(["framework"]):
        for key in model.get_rt_info()["framework"]:
            found[f"framework/{key}"] = model.get_rt_info(["framework", key]).astype(str)
    return found


def _constant_values(value: ov.Output) -> np.ndarray | None:
    node = value.get_node()
    return np.asarray(node.get_data()) if node.get_type_name() == "Constant" else None


def _op(node: ov.Node) -> Op:
    """``node`` as the layout rules see it: its Transpose perm or reduction axes."""
    kind = node.get_type_name()
    inputs = tuple(_key(v) for v in node.input_values())
    outputs = tuple(_key(o) for o in node.outputs())
    extra = _constant_values(node.input_value(1)) \
        if kind in ("Transpose", *REDUCTIONS) and node.get_input_size() > 1 else None
    if extra is None:
        return Op(kind, inputs, outputs)
    values = tuple(int(v) for v in extra.ravel())
    if kind == "Transpose":
        return Op(kind, inputs, outputs, perm=values)
    return Op(kind, inputs, outputs, axes=tuple(sorted(v % 4 for v in values)))


def _passed_on(node: ov.Node) -> ov.Output | None:
    """The input a no-op node passes on unchanged (up to unit axes), else None."""
    kind = node.get_type_name()
    if kind in PASS_ON or kind == "Convert" and node.get_output_element_type(0) == ov.Type.f32:
        return node.input_value(0)
    if kind in ("Multiply", "Divide"):
        for data, other in ((0, 1), (1, 0)) if kind == "Multiply" else ((0, 1),):
            one = _constant_values(node.input_value(other))
            if one is not None and bool(np.all(one == 1)):
                return node.input_value(data)
    return None


def _final_softmax(scores: ov.Output) -> ov.Node | None:
    """The Softmax over the classes that makes ``scores``, seen through a no-op tail."""
    node = scores.get_node()
    while node.get_type_name() != "Softmax":
        passed = _passed_on(node)
        if passed is None:
            return None
        node = passed.get_node()
    shape = node.get_input_partial_shape(0)
    dims = None if shape.rank.is_dynamic else \
        [d.get_length() if d.is_static else None for d in shape]
    return node if softmax_over_classes(dims, int(node.get_attributes()["axis"])) else None


def _reads_batch_only(node: ov.Node) -> bool:
    """A ``ShapeOf`` whose result is used only for the batch size (``x.size(0)``)."""
    if node.get_type_name() != "ShapeOf":
        return False
    users = [t.get_node() for t in node.output(0).get_target_inputs()]
    for user in users:
        if user.get_type_name() != "Gather":
            return False
        index, axis = _constant_values(user.input_value(1)), _constant_values(user.input_value(2))
        if index is None or axis is None or index.size != 1 or int(index.ravel()[0]) != 0 \
                or int(axis.ravel()[0]) != 0:
            return False
    return bool(users)


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
    seen, stack = {_key(start)}, [scores]
    while stack:
        node = stack.pop().get_node()
        if _reads_batch_only(node):
            if node.input_value(0).get_node().get_instance_id() not in after:
                node.input(0).replace_source_output(start)
            continue
        for v in node.input_values():
            if _key(v) not in seen:
                seen.add(_key(v))
                stack.append(v)


def _names(model: ov.Model, input_name: str, output_name: str) -> None:
    model.input(0).get_tensor().set_names({input_name})
    model.output(0).get_tensor().set_names({output_name})
