"""An OpenVINO IR classifier file read with the OpenVINO Python API (no torch): its image
input, its ops in order with unique names, the paths from the input to the result, the final
Softmax, and its runs in f32.

The map cut (:mod:`.ir_cut`) and the token cut (:mod:`.ir_tokens`) both read it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from reciprocam_ir.messages import first_line

from ..errors import ExportError
from ..input_size import InputSize
from .file_cut import ImageInput, image_input, softmax_over_classes
from .layouts import REDUCTIONS, Op

F32_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
PASS_ON = ("Identity", "Reshape", "Squeeze", "Unsqueeze")
Key = tuple[int, int]


def key(output: ov.Output) -> Key:
    """An output's identity in its graph: (node instance id, output index)."""
    return output.get_node().get_instance_id(), output.get_index()


def dims_of(shape: ov.PartialShape) -> list[int | None] | None:
    """A shape's sizes, None for a dynamic one; None when its rank is dynamic."""
    if shape.rank.is_dynamic:
        return None
    return [d.get_length() if d.is_static else None for d in shape]


def first_conv(param: ov.Node) -> tuple[str, int] | None:
    """The layout (NCHW, or NHWC when a Transpose to NCHW comes first) and channel count the
    first convolution reached from ``param`` reads; None without one."""
    layout, value = "NCHW", param.output(0)
    for _ in range(8):  # a few converts, scalings and a transpose may come first
        readers = [t.get_node() for t in value.get_target_inputs()]
        if len(readers) != 1:
            return None
        node = readers[0]
        kind = node.get_type_name()
        if kind in ("Convolution", "GroupConvolution"):
            weights = node.get_input_partial_shape(1)
            if weights.is_dynamic:
                return None
            dims = [d.get_length() for d in weights]
            channels = dims[1] if kind == "Convolution" else dims[0] * dims[2]
            return layout, channels
        if kind == "Transpose":
            perm = node.input_value(1).get_node()
            if perm.get_type_name() == "Constant" \
                    and list(perm.get_data().ravel()) == [0, 3, 1, 2]:
                layout = "NHWC"
        value = node.output(0)
    return None


class IrGraph:
    """An OpenVINO IR classifier file: its image input (batch made dynamic), its ops in
    order (``ordered``) with unique names (``names``, by instance id), the ops computed from
    the input (``reads_input``), its result and final Softmax."""

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
        dims = dims_of(params[0].get_output_partial_shape(0)) if len(params) == 1 else None
        is_float = len(params) == 1 and params[0].get_element_type() == ov.Type.f32
        conv = first_conv(params[0]) if len(params) == 1 else None
        self.input: ImageInput = image_input(self.source, names, dims, is_float, size, conv)
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
        self.metadata = metadata(model)
        self._analyse()

    def _analyse(self) -> None:
        self.ordered = ordered = self.model.get_ordered_ops()
        (param,) = self.model.get_parameters()
        self.reads_input = reads_input = {param.get_instance_id()}
        for node in ordered:
            if any(v.get_node().get_instance_id() in reads_input for v in node.input_values()):
                reads_input.add(node.get_instance_id())
        self.result = self.model.get_results()[0]
        self.result_input = self.result.input_value(0)
        out_rank = self.result_input.get_partial_shape().rank
        if out_rank.is_static and out_rank.get_length() != 2:
            raise ExportError(f"{self.source}: output has rank {out_rank.get_length()}; "
                              "expected one 2-D tensor of class scores (batch, classes)")
        self.known: set[str] = set()
        self.names: dict[int, str] = {}
        seen_names: dict[str, int] = {}
        for node in ordered:
            name = node.get_friendly_name()
            self.known.add(name)
            for out in node.outputs():
                self.known.update(out.get_names())
            seen_names[name] = seen_names.get(name, 0) + 1
            if seen_names[name] > 1:  # friendly names need not be unique
                name = f"{name}#{seen_names[name]}"
                self.known.add(name)
            self.names[node.get_instance_id()] = name
        softmax = final_softmax(self.result_input)
        self.softmax_input = softmax.input_value(0) if softmax is not None else None

    def all_paths_through(self, cut: ov.Output, result: ov.Node) -> bool:
        """Whether the result reads the Parameter only through ``cut``."""
        seen, stack = {key(cut)}, [result.input_value(0)]
        while stack:
            value = stack.pop()
            node = value.get_node()
            if node.get_type_name() == "Parameter":
                return False
            if reads_batch_only(node):
                continue
            for v in node.input_values():
                if key(v) not in seen:
                    seen.add(key(v))
                    stack.append(v)
        return True

    def scores(self, value: ov.Output, keep_softmax: bool) -> ov.Output:
        """What ``g`` outputs in the graph of ``value`` (the scores): the logits by default.

        ``g`` ends at the final Softmax's input when that already is the (N, classes) f32
        scores; otherwise (a (N, C, 1, 1) Softmax then a reshape, say) it is bypassed.
        """
        softmax = final_softmax(value) if not keep_softmax else None
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
        scores = self.scores(model.get_results()[0].input_value(0), keep_softmax)
        ref = ov.Model([scores], model.get_parameters(), "reference")
        try:
            out = self.core.compile_model(ref, "CPU", F32_CONFIG)({0: x})[0]
        except RuntimeError as exc:
            raise ExportError(f"{self.source}: OpenVINO cannot run the graph "
                              f"({first_line(exc)})") from None
        return np.asarray(out, np.float32)


def metadata(model: ov.Model) -> dict[str, str]:
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


def constant_values(value: ov.Output) -> np.ndarray | None:
    node = value.get_node()
    return np.asarray(node.get_data()) if node.get_type_name() == "Constant" else None


def layout_op(node: ov.Node) -> Op:
    """``node`` as the layout rules see it: its Transpose perm or reduction axes."""
    kind = node.get_type_name()
    inputs = tuple(key(v) for v in node.input_values())
    outputs = tuple(key(o) for o in node.outputs())
    extra = constant_values(node.input_value(1)) \
        if kind in ("Transpose", *REDUCTIONS) and node.get_input_size() > 1 else None
    if extra is None:
        return Op(kind, inputs, outputs)
    values = tuple(int(v) for v in extra.ravel())
    if kind == "Transpose":
        return Op(kind, inputs, outputs, perm=values)
    return Op(kind, inputs, outputs, axes=tuple(sorted(v % 4 for v in values)))


def passed_on(node: ov.Node) -> ov.Output | None:
    """The input a no-op node passes on unchanged (up to unit axes), else None."""
    kind = node.get_type_name()
    if kind in PASS_ON or kind == "Convert" and node.get_output_element_type(0) == ov.Type.f32:
        return node.input_value(0)
    if kind in ("Multiply", "Divide"):
        for data, other in ((0, 1), (1, 0)) if kind == "Multiply" else ((0, 1),):
            one = constant_values(node.input_value(other))
            if one is not None and bool(np.all(one == 1)):
                return node.input_value(data)
    return None


def final_softmax(scores: ov.Output) -> ov.Node | None:
    """The Softmax over the classes that makes ``scores``, seen through a no-op tail."""
    node = scores.get_node()
    while node.get_type_name() != "Softmax":
        passed = passed_on(node)
        if passed is None:
            return None
        node = passed.get_node()
    dims = dims_of(node.get_input_partial_shape(0))
    return node if softmax_over_classes(dims, int(node.get_attributes()["axis"])) else None


def reads_batch_only(node: ov.Node) -> bool:
    """A ``ShapeOf`` whose result is used only for the batch size (``x.size(0)``)."""
    if node.get_type_name() != "ShapeOf":
        return False
    users = [t.get_node() for t in node.output(0).get_target_inputs()]
    for user in users:
        if user.get_type_name() != "Gather":
            return False
        index, axis = constant_values(user.input_value(1)), constant_values(user.input_value(2))
        if index is None or axis is None or index.size != 1 or int(index.ravel()[0]) != 0 \
                or int(axis.ravel()[0]) != 0:
            return False
    return bool(users)
