"""OpenVINO: Intel CPU, GPU, NPU (or AUTO) on IR or ONNX graphs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ..masking import pooling_matrix
from ..messages import first_line
from .base import Backend, BackendError, FeaturesAndScores, Graph, Shape, affine_pair

DEVICES = ("CPU", "GPU", "NPU", "AUTO")


MAX_STATIC_SHAPES = 4
"""Static copies one graph compiles at most (one per set of input shapes it runs); inputs of
any other shape run on the dynamic graph, so memory stays bounded."""

InputShapes = tuple[tuple[int, ...], ...]
Specialise = Callable[[InputShapes], ov.CompiledModel | None]


class OpenVINOGraph(Graph):
    """A compiled graph. Where its inputs have dynamic axes (the batch of ``f``, ``g`` and
    the explain graph), ``specialise`` compiles a static copy for each set of input shapes
    it runs, the first ``max_static`` of them (OpenVINO's CPU kernels run a static batch
    faster); the dynamic graph serves every other shape, and any a copy cannot be made for.

    The dynamic graph, compiled up front (so a graph that cannot compile is refused at once),
    is let go when the first static copy replaces it before it ever ran, and compiled again
    by ``recompile`` only if a shape needs it: one batch size costs the memory of one graph.
    """

    def __init__(self, compiled: ov.CompiledModel, specialise: Specialise | None = None,
                 max_static: int = MAX_STATIC_SHAPES,
                 recompile: Callable[[], ov.CompiledModel] | None = None) -> None:
        self._dynamic: ov.CompiledModel | None = compiled
        self._dynamic_ran = False
        self._recompile = recompile
        self._inputs = [i.get_partial_shape() for i in compiled.inputs]
        self._outputs = len(compiled.outputs)
        dynamic = any(shape.is_dynamic for shape in self._inputs)
        self._specialise = specialise if dynamic and max_static > 0 else None
        self._max_static = max_static
        self._static: dict[InputShapes, ov.CompiledModel | None] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    @property
    def static_shapes(self) -> list[InputShapes]:
        """The input shapes a static copy was compiled for, in the order first run."""
        return [key for key, compiled in self._static.items() if compiled is not None]

    def _dynamic_graph(self) -> ov.CompiledModel:
        with self._lock:
            if self._dynamic is None:
                self._dynamic = self._recompile()
            self._dynamic_ran = True
            return self._dynamic

    def compiled_for(self, *inputs: np.ndarray) -> ov.CompiledModel:
        """The compiled model that runs ``inputs``: their static copy, compiled on first use
        while fewer than ``max_static`` exist, else the dynamic graph."""
        if self._specialise is None:
            return self._dynamic_graph()
        key = tuple(tuple(int(d) for d in np.shape(a)) for a in inputs)
        compiled = self._static.get(key)
        if compiled is not None:
            return compiled
        if key in self._static or len(key) != len(self._inputs) or not all(
                declared.compatible(ov.PartialShape(list(shape)))
                for declared, shape in zip(self._inputs, key, strict=True)):
            return self._dynamic_graph()  # shapes it refuses, with the engine's own message
        with self._lock:
            if key not in self._static and len(self._static) < self._max_static:
                if not self._dynamic_ran and self._recompile is not None:
                    self._dynamic = None  # never ran: memory for the copy instead
                self._static[key] = self._specialise(key)
            compiled = self._static.get(key)
        return compiled if compiled is not None else self._dynamic_graph()

    def _request(self, compiled: ov.CompiledModel) -> ov.InferRequest:
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        request = requests.get(id(compiled))
        if request is None:
            request = requests[id(compiled)] = compiled.create_infer_request()
        return request

    def outputs(self, x: np.ndarray, *more: np.ndarray) -> list[np.ndarray]:
        inputs = [np.ascontiguousarray(a, dtype=np.float32) for a in (x, *more)]
        request = self._request(self.compiled_for(*inputs))
        request.infer(dict(enumerate(inputs)))
        return [np.array(request.get_output_tensor(i).data, copy=True)
                for i in range(self._outputs)]


class OpenVINOBackend(Backend):
    name = "openvino"
    graph_format = ("ir", "onnx")
    engine_version = ov.get_version()

    def __init__(self, device: str | None = None, precision: str = "auto",
                 cache_dir: str | Path | None = None,
                 static_shapes: int = MAX_STATIC_SHAPES) -> None:
        """``static_shapes``: static copies each graph with a dynamic batch may compile for
        the shapes it runs (:class:`OpenVINOGraph`); 0 runs every graph as exported."""
        super().__init__(device or "CPU", precision, cache_dir)
        self.static_shapes = int(static_shapes)
        self.core = ov.Core()
        if self.cache_dir is not None:
            self.core.set_property({"CACHE_DIR": str(self.cache_dir)})
        family = self.device.split(".")[0].split(":")[0]
        if family not in DEVICES:
            raise BackendError(
                f"device {self.device!r} is not an OpenVINO device (choose from {DEVICES})"
            )
        if family != "AUTO" and not any(
            d == self.device or d.split(".")[0] == self.device for d in self.core.available_devices
        ):
            raise BackendError(
                f"OpenVINO device {self.device!r} is not available on this machine "
                f"(available: {', '.join(self.core.available_devices) or 'none'})"
            )

    @property
    def inference_precision(self) -> str:
        """For "auto", the device's own default (bf16 on CPUs with AVX-512 BF16 or AMX)."""
        if self.precision != "auto":
            return self.precision
        try:
            return self.core.get_property(self.device, "INFERENCE_PRECISION_HINT").get_type_name()
        except RuntimeError:  # a device (AUTO, NPU) that does not report one
            return "auto"

    def config(self) -> dict[str, str]:
        """Compile options: one explanation at a time is the job, so the latency hint."""
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.precision != "auto":
            config["INFERENCE_PRECISION_HINT"] = self.precision
        return config

    def _compile(self, model: str | ov.Model, name: str,
                 config: dict[str, str] | None = None) -> OpenVINOGraph:
        """``model`` (a file or one built in memory) compiled, with static copies made from
        it for the shapes it runs (the same options, so the same cache folder)."""
        config = config or self.config()

        def compile_dynamic() -> ov.CompiledModel:
            try:
                return self.core.compile_model(model, self.device, config)
            except RuntimeError as exc:
                raise BackendError(f"OpenVINO cannot compile {name} on {self.device}: "
                                   f"{first_line(exc)}") from None

        def specialise(shapes: tuple[tuple[int, ...], ...]) -> ov.CompiledModel | None:
            try:
                static = (self.core.read_model(model) if isinstance(model, str)
                          else model.clone())
                static.reshape({i: ov.PartialShape(list(shape))
                                for i, shape in enumerate(shapes)})
                return self.core.compile_model(static, self.device, config)
            except RuntimeError:
                return None  # the dynamic graph runs these shapes

        return OpenVINOGraph(compile_dynamic(), specialise, self.static_shapes, compile_dynamic)

    def compile(self, path: Path, digest: str | None = None) -> Graph:
        """Compiled from the file; cached in a folder of its own content's key.

        OpenVINO keys a model compiled from a path on the path (an IR's ``.bin`` changed in
        place is served stale from its cache); models built in memory (the static copies
        among them) it keys on content.
        """
        config = self.config()
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir / f"openvino-{self.cache_key(path, digest)}")
        return self._compile(str(path), path.name, config)

    def compile_pooled_explainer(self, f_path: Path, tail_path: Path,
                                 feature_shape: tuple[int, int, int],
                                 masks: np.ndarray | None = None) -> Graph | None:
        try:
            model = pooled_explainer_model(self.core.read_model(str(f_path)),
                                           self.core.read_model(str(tail_path)), feature_shape,
                                           masks)
        except RuntimeError as exc:
            raise BackendError(
                f"OpenVINO cannot read {f_path.name}/{tail_path.name}: {first_line(exc)}") from None
        return self._compile(model, f"{f_path.name}+{tail_path.name}")

    def io_shapes(self, path: Path, digest: str | None = None) -> tuple[Shape, Shape] | None:
        try:
            model = self.core.read_model(str(path))
        except RuntimeError:
            return None
        shapes = [v.get_partial_shape() for v in (model.inputs[0], model.outputs[0])]
        if any(s.rank.is_dynamic for s in shapes):
            return None
        inp, out = (tuple(d.get_length() if d.is_static else -1 for d in s) for s in shapes)
        return inp, out

    def affine_tail(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return affine_of(self.core.read_model(str(path)))
        except RuntimeError:
            return None

    def compile_features_and_scores(self, f_path: Path, tail_path: Path) -> FeaturesAndScores:
        try:
            model = features_and_scores_model(self.core.read_model(str(f_path)),
                                              self.core.read_model(str(tail_path)))
        except RuntimeError as exc:
            raise BackendError(
                f"OpenVINO cannot read {f_path.name}/{tail_path.name}: {first_line(exc)}") from None
        graph = self._compile(model, f"{f_path.name}+{tail_path.name}")

        def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            feature, scores = graph.outputs(x)
            return feature, scores

        return run


def features_and_scores_model(f: ov.Model, tail: ov.Model) -> ov.Model:
    """One model: input → ``f`` → (feature map, ``g_pooled`` of its global average).

    The second output is the plain model's own prediction, computed in the same
    inference as the feature map the affine rows need.
    """
    feature = detach_result(f)
    (pooled,) = tail.get_parameters()
    scores = detach_result(tail)
    mean = ops.reduce_mean(feature, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    for target in list(pooled.output(0).get_target_inputs()):
        target.replace_source_output(mean.output(0))
    return ov.Model([ops.result(feature), ops.result(scores)], f.get_parameters(),
                    "reciprocam_features_and_scores")


def constant(value: ov.Output) -> np.ndarray | None:
    """The data behind ``value`` as float32 when it is a constant, also behind a
    decompressing ``Convert`` (f16 weights); else None."""
    node = value.get_node()
    if node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    if node.get_type_name() != "Constant":
        return None
    return np.asarray(node.get_data(), dtype=np.float32)


def affine_of(model: ov.Model) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, b) of a model that is Parameter → [Reshape] → MatMul(W) → [Add(b)] → Result."""
    (result,) = model.get_results()
    (parameter,) = model.get_parameters()
    value = result.input_value(0)
    bias = None
    if value.get_node().get_type_name() == "Add":
        a, b = value.get_node().input_value(0), value.get_node().input_value(1)
        if constant(b) is None:
            a, b = b, a
        bias, value = constant(b), a
        if bias is None:
            return None
    node = value.get_node()
    if node.get_type_name() != "MatMul" or node.get_attributes()["transpose_a"]:
        return None
    weight = constant(node.input_value(1))
    if weight is None or weight.ndim != 2:
        return None
    if not node.get_attributes()["transpose_b"]:
        weight = weight.T
    x = node.input_value(0)
    while x.get_node().get_type_name() in ("Reshape", "Squeeze", "Convert"):
        x = x.get_node().input_value(0)
    width = parameter.get_partial_shape()[-1]
    if (x.get_node().get_type_name() != "Parameter" or not width.is_static
            or weight.shape[1] != width.get_length()):
        return None
    return affine_pair(weight, bias)


def detach_result(model: ov.Model) -> ov.Output:
    """The single output of ``model`` with its Result node unplugged, ready to splice."""
    (result,) = model.get_results()
    value = result.input_value(0)
    result.input(0).replace_source_output(ops.constant(np.zeros(1, np.float32)).output(0))
    return value


def pooled_explainer_model(f: ov.Model, tail: ov.Model, feature_shape: tuple[int, int, int],
                           masks: np.ndarray | None = None) -> ov.Model:
    """One model: input → ``f`` → [GAP row; N masked GAP rows] → ``g_pooled`` → (B, N+1, K).

    The rows are ``masking.pooling_matrix`` times F as (N, C): the unmasked row first, then
    the exact GAP of every masked map (one-hot when ``masks`` is None), so ``f`` and all
    N + 1 tail rows run in one inference, without a round trip through numpy.
    """
    c, h, w = feature_shape
    n = h * w
    feature = detach_result(f)
    (pooled,) = tail.get_parameters()
    scores = detach_result(tail)
    i64 = np.int64
    flat = ops.reshape(feature, ops.constant(np.array([-1, c, n], i64)), special_zero=False)
    rows = ops.transpose(flat, ops.constant(np.array([0, 2, 1], i64)))
    stacked = ops.matmul(ops.constant(pooling_matrix(n, masks)), rows, False, False)
    batch = ops.reshape(stacked, ops.constant(np.array([-1, c], i64)), special_zero=False)
    for target in list(pooled.output(0).get_target_inputs()):
        target.replace_source_output(batch.output(0))
    classes = scores.get_partial_shape()[-1].get_length()
    per_image = ops.reshape(scores, ops.constant(np.array([-1, n + 1, classes], i64)),
                            special_zero=False)
    per_image.set_friendly_name("scores")
    return ov.Model([ops.result(per_image)], f.get_parameters(), "reciprocam_pooled")
