"""Cut a deployed YOLO detector (ONNX or OpenVINO IR, as Ultralytics exports it) into ``f``
(image → feature levels) and ``g`` (levels → raw output (B, 4 + classes, anchors)).

No single tensor carries everything a YOLO neck reads: the backbone hands it three levels
(strides 8, 16, 32). The default cut is the set of tensors alive when the neck starts (its
first upsampling), i.e. the backbone's outputs; ``--layer a,b,c`` names another set of
tensors (ONNX) or nodes (IR) that every path from the input to the output crosses. A graph
exported with a fixed batch of 1 gets a dynamic one (its reshape constants read the batch
from their input instead), since ``g`` runs on many masked copies at once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reciprocam_ir.messages import first_line

from ..artifact.graph_files import BATCH
from ..errors import ExportError
from ..input_size import InputSize
from .file_cut import ImageInput, image_input
from .onnx_graph import dims_of

STRIDES = (8, 16, 32)
"""Ultralytics' detection strides (P3, P4, P5): how anchors tile the input."""
FEATURE_PREFIX = "feature"
DETECTIONS_NAME = "detections"


def anchor_count(size: tuple[int, int], strides: Sequence[int] = STRIDES) -> int:
    """Anchors of a YOLO head on an input of ``size`` (h, w): one per cell of each stride."""
    return sum(-(-size[0] // s) * -(-size[1] // s) for s in strides)


def detection_output(dims: Sequence[int | None] | None, size: tuple[int, int]) -> int | None:
    """The class count when ``dims`` is a YOLO raw output (B, 4 + classes, anchors) for an
    input of ``size``, else None."""
    if dims is None or len(dims) != 3 or dims[1] is None or dims[2] is None:
        return None
    if dims[1] > 4 and dims[2] == anchor_count(size):
        return int(dims[1]) - 4
    return None


@dataclass(frozen=True)
class Level:
    """One tensor of the cut: its name in the source graph and its (C, h, w)."""

    name: str
    shape: tuple[int, int, int]


def parse_layers(layer: str | None) -> list[str] | None:
    """``--layer a,b,c`` as names (None: the default cut)."""
    if layer is None:
        return None
    names = [n.strip() for n in layer.split(",") if n.strip()]
    if not names:
        raise ExportError(f"--layer {layer!r}: name the tensors of the cut, comma-separated")
    return names


def order_levels(levels: list[Level], source: str) -> list[Level]:
    """Finest first; refuse a cut without a spatial level."""
    if not levels or max(min(lv.shape[1:]) for lv in levels) < 2:
        raise ExportError(f"{source}: no cut with a spatial feature map (h, w > 1)")
    return sorted(levels, key=lambda lv: -lv.shape[1] * lv.shape[2])


# --------------------------------------------------------------------------- ONNX


class OnnxDetector:
    """An ONNX YOLO detector: its input, cut levels, and ``f``/``g`` extraction."""

    def __init__(self, path: str | Path, size: InputSize | None = None) -> None:
        import onnx

        self.source = str(path)
        if not Path(path).is_file():
            raise ExportError(f"model file '{path}' not found")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf and onnx raise many kinds
            raise ExportError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
        graph = model.graph
        self.metadata = {p.key: p.value for p in model.metadata_props}
        inits = {i.name for i in graph.initializer}
        inputs = [v for v in graph.input if v.name not in inits]
        dims = dims_of(inputs[0]) if len(inputs) == 1 else None
        is_float = len(inputs) == 1 and inputs[0].type.tensor_type.elem_type == \
            onnx.TensorProto.FLOAT
        self.input: ImageInput = image_input(self.source, [v.name for v in inputs], dims,
                                             is_float, size)
        if len(graph.output) != 1:
            raise ExportError(f"{path}: graph has {len(graph.output)} outputs; expected one "
                              "raw YOLO output (batch, 4 + classes, anchors)")
        task = self.metadata.get("task", "detect")
        if task != "detect":
            raise ExportError(f"{path}: an Ultralytics '{task}' model; only detection models "
                              "(task 'detect') are explained box by box")
        self.num_classes = detection_output(dims_of(graph.output[0]), self.input.size)
        if self.num_classes is None:
            raise ExportError(f"{path}: output shape {dims_of(graph.output[0])} is not a YOLO "
                              f"raw output (batch, 4 + classes, {anchor_count(self.input.size)}"
                              " anchors)")
        if dims is not None and dims[0] == 1:
            _free_reshape_batch(model)
        shape = self.input.shape()
        for i, d in enumerate(inputs[0].type.tensor_type.shape.dim):
            d.Clear()
            if i == 0:
                d.dim_param = BATCH
            else:
                d.dim_value = shape[i]
        _set_batch(graph.output[0])
        try:
            self.model = onnx.shape_inference.infer_shapes(model, strict_mode=False,
                                                           data_prop=True)
        except Exception as exc:
            raise ExportError(f"{path}: ONNX shape inference failed ({first_line(exc)})"
                              ) from None
        self.output = self.model.graph.output[0].name

    def _values(self) -> dict[str, list[int | None] | None]:
        g = self.model.graph
        return {v.name: dims_of(v) for v in (*g.input, *g.value_info, *g.output)}

    def levels(self, layers: list[str] | None) -> list[Level]:
        """The named tensors, or those alive when the first Resize (the neck) runs."""
        graph = self.model.graph
        order = list(graph.node)
        reads = {self.input.name}
        for node in order:
            if any(i in reads for i in node.input):
                reads.update(o for o in node.output if o)
        if layers is None:
            first = next((i for i, n in enumerate(order) if n.op_type == "Resize"), None)
            if first is None:
                raise ExportError(f"{self.source}: no upsampling (Resize) starts a neck; name "
                                  "the cut with --layer a,b,c")
            made = {o for n in order[:first] for o in n.output}
            later = {i for n in order[first:] for i in n.input}
            layers = [o for n in order[:first] for o in n.output
                      if o in made and o in later and o in reads]
        dims = self._values()
        levels = []
        for name in layers:
            d = dims.get(name)
            if name not in reads:
                raise ExportError(f"{self.source}: unknown tensor '{name}' (or it does not "
                                  "depend on the input)")
            if d is None or len(d) != 4 or None in d[1:]:
                raise ExportError(f"{self.source}: tensor '{name}' is not a 4-D feature map "
                                  f"(shape {d})")
            levels.append(Level(name, (d[1], d[2], d[3])))
        levels = order_levels(levels, self.source)
        self._check_cut([lv.name for lv in levels])
        return levels

    def _check_cut(self, names: list[str]) -> None:
        """Refuse a set of tensors that some path from the input to the output goes around."""
        producer = {o: n for n in self.model.graph.node for o in n.output}
        seen, stack = set(names), [self.output]
        while stack:
            name = stack.pop()
            if name == self.input.name:
                raise ExportError(f"{self.source}: the output reads the input around the cut "
                                  f"{', '.join(names)}; name every tensor the rest reads")
            node = producer.get(name)
            for i in node.input if node is not None else ():
                if i and i not in seen:
                    seen.add(i)
                    stack.append(i)

    def write(self, levels: list[Level], folder: Path) -> dict[str, Path]:
        """Write ``f.onnx`` (input → levels) and ``g.onnx`` (levels → raw output)."""
        import onnx

        names = [lv.name for lv in levels]
        parts = {"f": ([self.input.name], names), "g": (names, [self.output])}
        files = {}
        for role, (ins, outs) in parts.items():
            try:
                model = onnx.utils.Extractor(self.model).extract_model(ins, outs)
            except Exception as exc:
                raise ExportError(f"{self.source}: cannot extract {role} "
                                  f"({first_line(exc)})") from None
            graph = model.graph
            del graph.value_info[:]
            renamed = {self.input.name: "input", self.output: DETECTIONS_NAME,
                       **{n: f"{FEATURE_PREFIX}{i}" for i, n in enumerate(names)}}
            for old in [*ins, *outs]:
                _rename(graph, old, renamed[old])
            for value in (*graph.input, *graph.output):
                _set_batch(value)
            graph.name = role
            files[role] = folder / f"{role}.onnx"
            onnx.save(model, str(files[role]))
        return files

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The source graph's raw output on ``x`` with ONNX Runtime, one image at a time."""
        import onnxruntime as ort

        model = copy.deepcopy(self.model)
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {self.input.name: x[i : i + 1]})[0]
                               for i in range(len(x))]).astype(np.float32)


def _set_batch(value: object) -> None:
    dim = value.type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = BATCH


def _rename(graph: object, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def _free_reshape_batch(model: object) -> None:
    """Reshapes to a constant shape that starts with the traced batch 1 read it instead (0)."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for k, node in enumerate(graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            continue
        name = node.input[1]
        if name in inits:
            shape = numpy_helper.to_array(inits[name])
        elif name in constants and constants[name].attribute[0].name == "value":
            shape = numpy_helper.to_array(constants[name].attribute[0].t)
        else:
            continue
        if shape.ndim != 1 or len(shape) < 2 or shape[0] != 1:
            continue
        fixed = shape.copy()
        fixed[0] = 0
        new = f"{name}_batch_{k}"
        graph.initializer.append(onnx.numpy_helper.from_array(fixed.astype(shape.dtype), new))
        node.input[1] = new
    used = {i for n in graph.node for i in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)


# --------------------------------------------------------------------------- OpenVINO IR


class IrDetector:
    """An OpenVINO IR YOLO detector: its input, cut levels, and ``f``/``g``."""

    def __init__(self, path: str | Path, size: InputSize | None = None) -> None:
        import openvino as ov

        self.source = str(path)
        if not Path(path).is_file():
            raise ExportError(f"model file '{path}' not found")
        self.core = ov.Core()
        try:
            model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises several kinds
            raise ExportError(f"{path}: not a readable OpenVINO IR model ({first_line(exc)})"
                              ) from None
        params = model.get_parameters()
        dims = None
        if len(params) == 1:
            ps = params[0].get_output_partial_shape(0)
            if ps.rank.is_static:
                dims = [d.get_length() if d.is_static else None for d in ps]
        is_float = len(params) == 1 and params[0].get_element_type() == ov.Type.f32
        self.input: ImageInput = image_input(self.source,
                                             [p.get_friendly_name() for p in params], dims,
                                             is_float, size)
        if len(model.outputs) != 1:
            raise ExportError(f"{path}: graph has {len(model.outputs)} outputs; expected one "
                              "raw YOLO output (batch, 4 + classes, anchors)")
        out = model.output(0).get_partial_shape()
        out_dims = [d.get_length() if d.is_static else None for d in out] \
            if out.rank.is_static else None
        self.num_classes = detection_output(out_dims, self.input.size)
        if self.num_classes is None:
            raise ExportError(f"{path}: output shape {out_dims} is not a YOLO raw output "
                              f"(batch, 4 + classes, {anchor_count(self.input.size)} anchors)")
        try:
            model.reshape({model.input(0): ov.PartialShape([-1, *self.input.shape()[1:]])})
        except RuntimeError as exc:
            raise ExportError(f"{path}: cannot give the graph a dynamic batch axis "
                              f"({first_line(exc)})") from None
        self.model = model
        self.metadata = {}
        if model.has_rt_info(["model_info", "labels"]):
            self.metadata["labels"] = model.get_rt_info(["model_info", "labels"]).astype(str)

    def levels(self, layers: list[str] | None) -> list[Level]:
        """The named nodes' outputs, or those alive when the first Interpolate (the neck)
        runs; a level is named by its node's friendly name (``name:k`` for output k)."""
        ordered = self.model.get_ordered_ops()
        self._positions = {}
        reads = {self.model.get_parameters()[0].get_instance_id()}
        for node in ordered:
            if any(v.get_node().get_instance_id() in reads for v in node.input_values()):
                reads.add(node.get_instance_id())
        outputs = {}
        for position, node in enumerate(ordered):
            for out in node.outputs():
                name = node.get_friendly_name() + (f":{out.get_index()}" if out.get_index()
                                                   else "")
                outputs[name] = (position, out)
                for alias in out.get_names():
                    outputs.setdefault(alias, (position, out))
        if layers is None:
            first = next((i for i, n in enumerate(ordered)
                          if n.get_type_name() == "Interpolate"), None)
            if first is None:
                raise ExportError(f"{self.source}: no upsampling (Interpolate) starts a neck; "
                                  "name the cut with --layer a,b,c")
            layers = []
            for node in ordered[:first]:
                if node.get_instance_id() not in reads or node.get_type_name() == "Parameter":
                    continue
                for out in node.outputs():
                    users = [t.get_node() for t in out.get_target_inputs()]
                    if any(ordered.index(u) >= first for u in users):
                        layers.append(node.get_friendly_name() + (
                            f":{out.get_index()}" if out.get_index() else ""))
        levels = []
        for name in layers:
            if name not in outputs:
                raise ExportError(f"{self.source}: unknown node '{name}'")
            position, out = outputs[name]
            ps = out.get_partial_shape()
            if ps.rank.is_dynamic or ps.rank.get_length() != 4 or \
                    any(d.is_dynamic for d in list(ps)[1:]):
                raise ExportError(f"{self.source}: '{name}' is not a 4-D feature map ({ps})")
            c, h, w = (d.get_length() for d in list(ps)[1:])
            self._positions[name] = (position, out.get_index())
            levels.append(Level(name, (c, h, w)))
        return order_levels(levels, self.source)

    def _copy(self, levels: list[Level]) -> tuple[object, list[object]]:
        """A fresh copy of the model and the levels' outputs in it (by topological position)."""
        model = self.model.clone()
        ordered = model.get_ordered_ops()
        return model, [ordered[self._positions[lv.name][0]].output(self._positions[lv.name][1])
                       for lv in levels]

    def write(self, levels: list[Level], folder: Path) -> dict[str, Path]:
        """Write ``f.xml`` (input → levels) and ``g.xml`` (levels → raw output)."""
        import openvino as ov
        import openvino.opset13 as ops

        model, outs = self._copy(levels)
        f = ov.Model(outs, model.get_parameters(), "f")
        f.input(0).get_tensor().set_names({"input"})
        for i, out in enumerate(f.outputs):
            out.get_tensor().set_names({f"{FEATURE_PREFIX}{i}"})
        model, outs = self._copy(levels)
        params = []
        for i, (lv, out) in enumerate(zip(levels, outs, strict=True)):
            param = ops.parameter([-1, *lv.shape], ov.Type.f32, name=f"{FEATURE_PREFIX}{i}")
            for target in list(out.get_target_inputs()):
                target.replace_source_output(param.output(0))
            params.append(param)
        g = ov.Model([model.get_results()[0].input_value(0)], params, "g")
        for i, p in enumerate(params):
            p.output(0).get_tensor().set_names({f"{FEATURE_PREFIX}{i}"})
        g.output(0).get_tensor().set_names({DETECTIONS_NAME})
        files = {}
        for role, m in (("f", f), ("g", g)):
            try:
                m.validate_nodes_and_infer_types()
                if role == "g" and any(p.get_type_name() == "Parameter"
                                       and p.get_friendly_name() not in
                                       {q.get_friendly_name() for q in params}
                                       for p in m.get_ordered_ops()):
                    raise RuntimeError("the output reads the input around the cut")
                files[role] = folder / f"{role}.xml"
                ov.save_model(m, str(files[role]), compress_to_fp16=False)
            except RuntimeError as exc:
                raise ExportError(f"{self.source}: cannot build {role} ({first_line(exc)})"
                                  ) from None
        return files

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The source graph's raw output on ``x`` with OpenVINO in f32, one image at a time."""
        compiled = self.core.compile_model(self.model, "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([compiled({0: x[i : i + 1]})[0]
                               for i in range(len(x))]).astype(np.float32)


def open_detector(path: str | Path, size: InputSize | None = None) -> OnnxDetector | IrDetector:
    """The detector cutter for a ``.onnx`` or ``.xml`` file."""
    if str(path).lower().endswith(".onnx"):
        return OnnxDetector(path, size)
    return IrDetector(path, size)


def is_detector(path: str | Path) -> bool:
    """Whether a graph file's single output is a YOLO raw output for its input size (read
    from the file's declared shapes; False when they do not say)."""
    try:
        if str(path).lower().endswith(".onnx"):
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            inits = {i.name for i in model.graph.initializer}
            inputs = [v for v in model.graph.input if v.name not in inits]
            if len(inputs) != 1 or len(model.graph.output) != 1:
                return False
            dims, out = dims_of(inputs[0]), dims_of(model.graph.output[0])
        else:
            import openvino as ov

            model = ov.Core().read_model(str(path))
            if len(model.inputs) != 1 or len(model.outputs) != 1:
                return False
            shapes = [model.input(0).get_partial_shape(), model.output(0).get_partial_shape()]
            dims, out = ([d.get_length() if d.is_static else None for d in s]
                         if s.rank.is_static else None for s in shapes)
    except Exception:  # unreadable: the classifier path says why
        return False
    if dims is None or len(dims) != 4 or None in dims[1:]:
        return False
    size = (dims[2], dims[3]) if dims[1] == 3 else (dims[1], dims[2])
    return detection_output(out, size) is not None
