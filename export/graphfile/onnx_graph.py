"""An ONNX classifier file read with onnx's own tooling (no torch): its image input, every
tensor's shape, the paths from the input to the output, and its runs with ONNX Runtime.

The map cut (:mod:`.onnx_cut`) and the token cut (:mod:`.onnx_tokens`) both read it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from reciprocam_ir.messages import first_line

from ..artifact.graph_files import BATCH
from ..artifact.graph_ops import onnx_opset
from ..artifact.verify import verification_input
from ..errors import ExportError
from ..input_size import InputSize
from .file_cut import CutPoint, ImageInput, image_input, softmax_over_classes
from .layouts import REDUCTIONS, Op

FLOAT_TYPES = (TensorProto.FLOAT,)
RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


def dims_of(value: onnx.ValueInfoProto | None) -> list[int | None] | None:
    """A tensor's sizes, None for a symbolic one; None when its shape is unknown."""
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value.type.tensor_type.shape.dim]


def first_conv(graph: onnx.GraphProto, image: str) -> tuple[str, int] | None:
    """The layout (NCHW, or NHWC when a Transpose to NCHW comes first) and channel count the
    first convolution computed from ``image`` reads; None without a readable one."""
    reads, layout = {image}, "NCHW"
    weights = {i.name: list(i.dims) for i in graph.initializer}
    for node in graph.node:
        if not any(i in reads for i in node.input):
            continue
        if node.op_type == "Transpose" and image in node.input:
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            layout = "NHWC" if perm == [0, 3, 1, 2] else layout
        if node.op_type == "Conv":
            dims = weights.get(node.input[1]) if len(node.input) > 1 else None
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            return None if dims is None or len(dims) != 4 else (layout, dims[1] * group)
        reads.update(o for o in node.output if o)
    return None


class OnnxGraph:
    """An ONNX classifier file: its image input (size fixed, batch dynamic), every tensor's
    inferred shape (``values``; ``maps``: the 4-D float tensors computed from the input), the
    final Softmax, and the paths from the input to the output."""

    def __init__(self, path: str | Path, size: InputSize | None = None) -> None:
        self.path = Path(path)
        self.source = str(path)
        if not self.path.is_file():
            raise ExportError(f"model file '{path}' not found")
        try:
            model = onnx.load(str(self.path))
        except Exception as exc:  # protobuf and onnx raise many kinds
            raise ExportError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
        graph = model.graph
        self.metadata = {p.key: p.value for p in model.metadata_props}
        initializers = {i.name for i in graph.initializer}
        inputs = [v for v in graph.input if v.name not in initializers]
        dims = dims_of(inputs[0]) if len(inputs) == 1 else None
        is_float = len(inputs) == 1 and inputs[0].type.tensor_type.elem_type in FLOAT_TYPES
        conv = first_conv(graph, inputs[0].name) if len(inputs) == 1 else None
        self.input: ImageInput = image_input(self.source, [v.name for v in inputs], dims,
                                             is_float, size, conv)
        if len(graph.output) != 1:
            raise ExportError(f"{path}: graph has {len(graph.output)} outputs; expected one "
                              "2-D tensor of class scores (batch, classes)")
        # Fix the spatial size, make the batch axis dynamic, then infer every tensor's shape.
        shape = self.input.shape()
        for i, d in enumerate(inputs[0].type.tensor_type.shape.dim):
            d.Clear()
            if i == 0:
                d.dim_param = BATCH
            else:
                d.dim_value = shape[i]
        self.model = self._inferred(model)
        self.freed_batch = self._free_batch()
        self.output = self.model.graph.output[0].name
        self._resolve_token_reshapes()
        self._analyse()

    def _inferred(self, model: onnx.ModelProto) -> onnx.ModelProto:
        try:
            return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception as exc:
            raise ExportError(f"{self.source}: ONNX shape inference failed ({first_line(exc)})"
                              ) from None

    def _free_batch(self) -> list[str]:
        """Free the batch where a Reshape fixes it at 1 (Ultralytics' default export traces
        ``x.view(B, ...)`` with B = 1): its shape's leading 1 becomes 0, "copy the input's
        batch", when the Reshape's input has the batch axis first. The Reshapes' names."""
        freed: list[str] = []
        for _ in range(64):  # a freed Reshape frees the batch of the tensors after it
            graph = self.model.graph
            self.producer = {out: node for node in graph.node for out in node.output if out}
            values = {v.name: v for v in (*graph.input, *graph.value_info)}
            more = [n for n in graph.node if n.op_type == "Reshape" and n.name not in freed
                    and self._fixes_batch(n, values.get(n.input[0]))]
            if not more:
                return freed
            for node in more:
                shape = self.constant(node.input[1])
                shape = np.concatenate([[0], shape[1:]]).astype(shape.dtype)
                name = f"{node.input[1]}_free_batch"
                graph.initializer.append(onnx.numpy_helper.from_array(shape, name))
                node.input[1] = name
                node.name = node.name or node.output[0]
                freed.append(node.name)
            del graph.value_info[:]  # inferred with the batch fixed: infer again
            self.model = self._inferred(self.model)
        return freed

    def _resolve_token_reshapes(self) -> None:
        """Give the Reshapes before a LayerNorm of unknown input shape their shapes, measured.

        Below opset 14, ONNX's shape inference gives up on a Reshape to a computed shape (a
        ViT's ``flatten(2)`` as torch writes it), leaving every token tensor after it
        unknown. Such Reshapes' outputs are measured at batch 1 and 2 (a size that follows
        the batch stays symbolic), recorded, and the shapes inferred again."""
        from .onnx_layer_norm import layer_norms

        graph = self.model.graph
        values = {v.name: v for v in (*graph.input, *graph.value_info)}
        if all(dims_of(values.get(n.input)) is not None for n in layer_norms(graph)):
            return
        names = [n.output[0] for n in graph.node if n.op_type == "Reshape"
                 and None in (dims_of(values.get(n.output[0])) or [None, None])[1:]]
        if not names:
            return
        x = verification_input(self.input.shape())
        one, two = self.measured(names, x), self.measured(names, np.concatenate([x, x]))
        known = []
        for name in names:
            dims = [a if a == b else None for a, b in zip(one[name].shape, two[name].shape,
                                                          strict=True)]
            known.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(one[name].dtype),
                [d if d is not None else BATCH for d in dims]))
        kept = [v for v in graph.value_info if v.name not in set(names)]
        del graph.value_info[:]
        graph.value_info.extend([*kept, *known])
        self.model = self._inferred(self.model)

    def _fixes_batch(self, node: onnx.NodeProto, data: onnx.ValueInfoProto | None) -> bool:
        """A Reshape to a constant shape that sets a batch-first input's batch to 1."""
        dims = dims_of(data)
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        if allowzero or not dims or dims[0] is not None:  # sizes but the batch are fixed
            return False
        shape = self.constant(node.input[1])
        return shape is not None and shape.ndim == 1 and len(shape) > 0 and shape[0] == 1

    def _analyse(self) -> None:
        graph = self.model.graph
        self.producer = {out: node for node in graph.node for out in node.output if out}
        values = {v.name: v for v in (*graph.input, *graph.value_info, *graph.output)}
        self.values = values
        self._head_shapes: dict[str, list[int | None]] = {}
        reads_input = {self.input.name}
        for node in graph.node:
            if any(i in reads_input for i in node.input):
                reads_input.update(o for o in node.output if o)
        if self.output not in reads_input:
            raise ExportError(f"{self.source}: the output does not depend on the input")
        self.batch_reads = {n.output[0] for n in graph.node if self._reads_batch_only(n)}
        self.known = set(self.producer) | {n.name for n in graph.node if n.name}
        self.maps = self._feature_shapes(values, reads_input)
        self.softmax = self._final_softmax(values)
        self.softmax_input = self.softmax.input[0] if self.softmax is not None else None
        # g ends at the Softmax's input when that already is the (N, classes) f32 scores;
        # otherwise (a (N, C, 1, 1) Softmax then Flatten, say) the Softmax is bypassed
        logits = values.get(self.softmax_input or "")
        self.logits_end = self.softmax_input if logits is not None and \
            logits.type.tensor_type.elem_type in FLOAT_TYPES \
            and len(self.scores_dims(self.softmax_input) or ()) == 2 else self.output

    def scores_dims(self, name: str) -> list[int | None] | None:
        """The sizes of the head's tensor ``name``: inferred, else measured at the input size
        (so the ONNX and IR cutters, OpenVINO resolving shapes itself, decide alike)."""
        dims = dims_of(self.values.get(name))
        if dims is not None and None not in dims[1:]:
            return dims
        if name not in self._head_shapes:
            array = self.measured([name])[name]
            self._head_shapes[name] = [None, *array.shape[1:]] if array.ndim else []
        return self._head_shapes[name]

    def _final_softmax(self, values: dict[str, onnx.ValueInfoProto]) -> onnx.NodeProto | None:
        """The Softmax over the classes that makes the output, seen through a no-op tail."""
        opset = onnx_opset(self.model) or 13
        node = self.producer.get(self.output)
        while node is not None and node.op_type != "Softmax":
            passed = self._passed_on(node)
            node = self.producer.get(passed) if passed is not None else None
        if node is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dims = self.scores_dims(node.input[0])
        return node if softmax_over_classes(dims, attrs.get("axis", -1 if opset >= 13 else 1)) \
            else None

    def _passed_on(self, node: onnx.NodeProto) -> str | None:
        """The input a no-op node passes on unchanged (up to unit axes), else None."""
        if node.op_type in ("Identity", "Dropout", *RESHAPES):
            return node.input[0]
        if node.op_type == "Cast":
            to_float = any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)
            return node.input[0] if to_float else None
        if node.op_type in ("Mul", "Div") and len(node.input) == 2:
            pairs = ((0, 1), (1, 0)) if node.op_type == "Mul" else ((0, 1),)
            for data, other in pairs:
                one = self.constant(node.input[other])
                if one is not None and bool(np.all(one == 1)):
                    return node.input[data]
        return None

    def _feature_shapes(self, values: dict[str, onnx.ValueInfoProto],
                        reads_input: set[str]) -> dict[str, tuple[int, ...]]:
        """Shapes of the 4-D float tensors computed from the input; inferred, else measured.

        Where shape inference leaves a size open (pads computed in the graph, say), the
        tensor is measured by running the graph once with ONNX Runtime.
        """
        shapes, unsure = {}, []
        for name in reads_input - {self.input.name, self.output}:
            value = values.get(name)
            dims = dims_of(value) if value is not None else None
            elem = value.type.tensor_type.elem_type if value is not None else None
            if elem is not None and elem != TensorProto.UNDEFINED and elem not in FLOAT_TYPES:
                continue
            if dims is not None and len(dims) == 4 and None not in dims[1:] \
                    and elem in FLOAT_TYPES:
                shapes[name] = tuple(dims)
            elif dims is None or len(dims) == 4:
                unsure.append(name)
        if unsure:
            shapes.update((n, a.shape) for n, a in self.measured(unsure).items()
                          if a.dtype == np.float32 and a.ndim == 4)
        return shapes

    def measured(self, names: list[str], x: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
        """Tensors ``names`` of the graph on ``x`` (one verification image by default), by
        ONNX Runtime: their shapes where inference leaves them open (a head reshaped by a
        computed shape)."""
        import onnxruntime as ort

        model = copy.deepcopy(self.model)
        outputs = {o.name for o in model.graph.output}
        model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names
                                  if n not in outputs)
        try:
            session = ort.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            arrays = session.run(names, {self.input.name: verification_input(
                self.input.shape()) if x is None else x})
        except Exception as exc:
            raise ExportError(f"{self.source}: ONNX Runtime cannot run the graph "
                              f"({first_line(exc)})") from None
        return dict(zip(names, arrays, strict=True))

    def layout_op(self, node: onnx.NodeProto) -> Op:
        """``node`` as the layout rules see it: its Transpose perm or reduction axes."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        perm = tuple(attrs["perm"]) if node.op_type == "Transpose" and "perm" in attrs else None
        return Op(node.op_type, tuple(node.input), tuple(node.output), perm,
                  self._reduce_axes(node) if node.op_type in REDUCTIONS else None)

    def _reduce_axes(self, node: onnx.NodeProto) -> tuple[int, ...] | None:
        """The axes (of a 4-D input, non-negative) a reduction reduces, when constant."""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            const = self.constant(node.input[1])
            axes = None if const is None else const.ravel().tolist()
        return None if axes is None else tuple(sorted(int(a) % 4 for a in axes))

    def constant(self, name: str) -> np.ndarray | None:
        init = next((i for i in self.model.graph.initializer if i.name == name), None)
        if init is not None:
            return onnx.numpy_helper.to_array(init)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute \
                and node.attribute[0].name == "value":
            return onnx.numpy_helper.to_array(node.attribute[0].t)
        return None

    def _reads_batch_only(self, node: onnx.NodeProto) -> bool:
        """A ``Shape`` whose result is used only for the batch size (``x.size(0)``)."""
        if node.op_type != "Shape":
            return False
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("start", 0) == 0 and attrs.get("end") == 1:
            return True
        users = [n for n in self.model.graph.node if node.output[0] in n.input]
        for user in users:
            index = self.constant(user.input[1]) if len(user.input) > 1 else None
            axis = {a.name: helper.get_attribute_value(a) for a in user.attribute}.get("axis", 0)
            if user.op_type != "Gather" or axis != 0 or index is None \
                    or index.size != 1 or int(index.ravel()[0]) != 0:
                return False
        return bool(users)

    def _tail_outputs(self, cut: str, end: str) -> set[str]:
        """Tensors made between ``cut`` and ``end``; batch-size reads are not followed up."""
        seen, stack, made = {cut}, [end], set()
        while stack:
            name = stack.pop()
            node = self.producer.get(name)
            if node is None:
                continue
            made.add(name)
            if node.output[0] in self.batch_reads:
                continue
            for i in node.input:
                if i and i not in seen:
                    seen.add(i)
                    stack.append(i)
        return made

    def all_paths_through(self, cut: str) -> bool:
        """Whether the output reads the input only through ``cut`` (batch size aside)."""
        seen, stack = {cut}, [self.output]
        while stack:
            name = stack.pop()
            if name == self.input.name:
                return False
            node = self.producer.get(name)
            if node is not None and name in self.batch_reads:
                continue
            for i in node.input if node is not None else ():
                if i and i not in seen:
                    seen.add(i)
                    stack.append(i)
        return True

    def scores_tensor(self, keep_softmax: bool) -> str:
        """The tensor ``g`` ends at: the Softmax's input unless it is kept (or bypassed)."""
        return self.output if self.softmax is None or keep_softmax else self.logits_end

    def scores_model(self, keep_softmax: bool) -> onnx.ModelProto:
        """The model, or a copy whose final Softmax passes its input on (an Identity)."""
        if self.softmax is None or keep_softmax or self.logits_end != self.output:
            return self.model
        model = copy.deepcopy(self.model)
        node = next(n for n in model.graph.node if n.output[0] == self.softmax.output[0])
        node.op_type = "Identity"
        del node.attribute[:]
        return model

    def reference(self, x: np.ndarray, keep_softmax: bool) -> np.ndarray:
        """The original graph's scores on ``x`` with ONNX Runtime (pre-Softmax by default)."""
        import onnxruntime as ort

        model = copy.deepcopy(self.scores_model(keep_softmax))
        wanted = self.scores_tensor(keep_softmax)
        if wanted != self.output:
            model.graph.output.append(helper.make_empty_tensor_value_info(wanted))
        try:
            session = ort.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            out = session.run([wanted], {self.input.name: x})[0]
        except Exception as exc:
            raise ExportError(f"{self.source}: ONNX Runtime cannot run the graph "
                              f"({first_line(exc)})") from None
        if out.ndim != 2:
            raise ExportError(f"{self.source}: output has shape {out.shape}; expected one 2-D "
                              "tensor of class scores (batch, classes)")
        return np.asarray(out, np.float32)

    def feature(self, x: np.ndarray, cut: CutPoint) -> np.ndarray:
        """The original graph's tensor at ``cut`` on ``x`` with ONNX Runtime."""
        import onnxruntime as ort

        model = copy.deepcopy(self.model)
        model.graph.output.append(helper.make_empty_tensor_value_info(cut.name))
        try:
            session = ort.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            return np.asarray(session.run([cut.name], {self.input.name: x})[0], np.float32)
        except Exception as exc:
            raise ExportError(f"{self.source}: ONNX Runtime cannot run the graph "
                              f"({first_line(exc)})") from None

    def rebound(self, model: onnx.ModelProto, start: str, end: str) -> onnx.ModelProto:
        """``model`` with the batch-size reads between ``start`` and ``end`` reading ``start``.

        The batch size after the cut comes from the feature map (a 4-D N, C, h, w tensor).
        Reads of tensors made after the cut stay: their first axis need not be the batch
        (attention's (T, B, D) query).
        """
        if start == self.input.name:
            return model
        model = copy.deepcopy(model)
        made = self._tail_outputs(start, end)
        tail = made & self.batch_reads
        for node in model.graph.node:
            if node.output and node.output[0] in tail and node.input[0] not in made:
                node.input[0] = start
        return model

