"""ONNX Runtime: CPU, or CUDA on NVIDIA GPUs with onnxruntime-gpu."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ..masking import pooling_matrix
from ..messages import first_line
from .base import Backend, BackendError, Graph, Shape, affine_pair

PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}


class OnnxRuntimeGraph(Graph):
    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._inputs = [i.name for i in session.get_inputs()]

    def outputs(self, x: np.ndarray, *more: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {name: np.ascontiguousarray(a, np.float32)
                                        for name, a in zip(self._inputs, (x, *more),
                                                           strict=True)})


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    graph_format = ("onnx",)
    engine_version = ort.__version__

    def __init__(self, device: str | None = None, precision: str = "auto",
                 cache_dir: str | Path | None = None) -> None:
        super().__init__((device or "CPU").upper(), precision, cache_dir)
        if self.device not in PROVIDERS:
            raise BackendError(
                f"device {self.device!r} is not an ONNX Runtime device "
                f"(choose from {tuple(PROVIDERS)})"
            )
        if precision not in ("auto", "f32"):
            raise BackendError(f"ONNX Runtime runs these graphs in f32 only, not {precision!r}")
        provider = PROVIDERS[self.device]
        if provider not in ort.get_available_providers():
            hint = " (install onnxruntime-gpu: pip install .[gpu])" if self.device == "CUDA" else ""
            raise BackendError(
                f"ONNX Runtime has no {provider} here{hint}; "
                f"available: {', '.join(ort.get_available_providers())}"
            )
        self.providers = list(dict.fromkeys([provider, PROVIDERS["CPU"]]))
        self._sessions: dict[tuple[Path, str | None], OnnxRuntimeGraph] = {}

    def cached_path(self, path: Path, digest: str | None = None) -> Path | None:
        """Where the optimised form of ``path`` is cached: keyed by :meth:`cache_key`."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{Path(path).stem}-{self.cache_key(path, digest)}.ort.onnx"

    def compile(self, path: Path, digest: str | None = None) -> OnnxRuntimeGraph:
        """One session per file and content: sessions are thread-safe, so a second request
        reuses it."""
        key = (Path(path).resolve(), digest)
        if key not in self._sessions:
            self._sessions[key] = self._create(Path(path), digest)
        return self._sessions[key]

    @staticmethod
    def _options(optimise: bool = True) -> ort.SessionOptions:
        """Graph optimisation (unless loading an optimised cache entry); intra-op threads that
        sleep when a run ends.

        Spinning threads (ORT's default) keep a core busy after each run, so a second
        session, numpy or preprocessing that follows runs against them: on a 2-core CPU,
        three sessions run in turn took 2.5x as long with spinning as without.
        """
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL \
            if optimise else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return options

    def _create(self, path: Path, digest: str | None) -> OnnxRuntimeGraph:
        """A session on ``path``, from the cache where a valid entry exists.

        The optimised model is written under a temporary name and renamed into place, so an
        interrupted write leaves no entry; an entry that fails to load is rebuilt.
        """
        cached = self.cached_path(path, digest)
        if cached is not None and cached.is_file():
            try:
                session = ort.InferenceSession(str(cached), self._options(optimise=False),
                                               providers=self.providers)
            except Exception:  # noqa: BLE001 - a damaged entry is rebuilt below
                cached.unlink(missing_ok=True)
            else:
                return OnnxRuntimeGraph(self._on_device(session, path))
        options = self._options()
        partial = None
        if cached is not None:
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BackendError(
                    f"cannot create cache folder '{cached.parent}': {exc.strerror}") from None
            partial = cached.with_name(
                f".{cached.name}.{os.getpid()}-{threading.get_ident()}.tmp")
            options.optimized_model_filepath = str(partial)
        try:
            session = ort.InferenceSession(str(path), options, providers=self.providers)
        except BaseException as exc:
            if partial is not None:
                partial.unlink(missing_ok=True)
            if not isinstance(exc, Exception):  # Ctrl-C: leave no partial entry behind
                raise
            raise BackendError(f"ONNX Runtime cannot load {path.name}: {first_line(exc)}") from None
        if partial is not None:
            try:
                os.replace(partial, cached)
            except OSError:  # an unwritable cache only means the next start optimises again
                partial.unlink(missing_ok=True)
        return OnnxRuntimeGraph(self._on_device(session, path))

    def _on_device(self, session: ort.InferenceSession, path: Path) -> ort.InferenceSession:
        """``session``, refused when ONNX Runtime fell back to the CPU from the device asked
        for (it only warns when, say, the CUDA or cuDNN libraries cannot be loaded)."""
        if self.providers[0] not in session.get_providers():
            raise BackendError(
                f"ONNX Runtime could not run {path.name} on {self.device}: "
                f"{self.providers[0]} did not start (see ONNX Runtime's warning above: are "
                "the CUDA and cuDNN libraries it needs installed?)")
        return session

    def io_shapes(self, path: Path, digest: str | None = None) -> tuple[Shape, Shape] | None:
        """Read with the ``onnx`` package where installed, so that checking a graph that may
        never run (the general path behind an explain graph) builds no session; else from
        the session itself (then reused by :meth:`compile`)."""
        try:
            import onnx
        except ImportError:
            session = self.compile(path, digest)._session
            return _shape(session.get_inputs()[0].shape), _shape(session.get_outputs()[0].shape)
        try:
            graph = onnx.load(str(path), load_external_data=False).graph
        except Exception:  # noqa: BLE001 - unreadable here: the session will say why
            return None
        initializers = {t.name for t in graph.initializer}
        inputs = [v for v in graph.input if v.name not in initializers]
        dims = [[d.dim_value if d.HasField("dim_value") else None
                 for d in v.type.tensor_type.shape.dim] for v in (inputs[0], graph.output[0])]
        return _shape(dims[0]), _shape(dims[1])

    def compile_pooled_explainer(self, f_path: Path, tail_path: Path,
                                 feature_shape: tuple[int, int, int],
                                 masks: np.ndarray | None = None) -> Graph | None:
        """One session for ``f`` and all N + 1 tail rows (needs the ``onnx`` package).

        One session, one thread pool: two sessions run back to back compete for the cores.
        """
        try:
            import onnx
        except ImportError:
            return None
        try:
            model = pooled_explainer_onnx(onnx.load(str(f_path)), onnx.load(str(tail_path)),
                                          feature_shape, masks)
            session = ort.InferenceSession(model.SerializeToString(), self._options(),
                                           providers=self.providers)
        except Exception:  # noqa: BLE001 - a graph that cannot be fused runs unfused
            return None
        return OnnxRuntimeGraph(self._on_device(session, f_path))

    def affine_tail(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """Read with the ``onnx`` package where installed (ONNX Runtime does not show weights)."""
        try:
            import onnx
        except ImportError:
            return None
        try:
            return affine_of_onnx(onnx.load(str(path)))
        except Exception:  # noqa: BLE001 - an unreadable graph only means no shortcut
            return None


def _shape(dims: Any) -> Shape:
    """A declared shape with -1 for every axis that is not a fixed integer."""
    return tuple(d if isinstance(d, int) and d > 0 else -1 for d in dims)


def affine_of_onnx(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, b) of an ONNX graph that is input → [Reshape/Flatten] → Gemm or MatMul[+Add] → output.

    Reshapes of the (B, C) input that end at (·, C) keep every row, so they pass.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        return None
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    producer = {out: node for node in graph.node for out in node.output}
    node = producer.get(graph.output[0].name)
    bias = None
    if node is not None and node.op_type == "Add":
        a, b = node.input
        if b not in consts:
            a, b = b, a
        if b not in consts:
            return None
        bias, node = consts[b], producer.get(a)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.input[1] not in consts or attrs.get("transA", 0):
        return None
    weight = consts[node.input[1]].astype(np.float32)
    if weight.ndim != 2:
        return None
    if node.op_type == "MatMul" or not attrs.get("transB", 0):
        weight = weight.T
    if node.op_type == "Gemm":
        weight = weight * np.float32(attrs.get("alpha", 1.0))
        if len(node.input) > 2 and node.input[2]:
            if bias is not None or node.input[2] not in consts:
                return None
            bias = consts[node.input[2]] * np.float32(attrs.get("beta", 1.0))
    x = node.input[0]
    while x in producer and producer[x].op_type in ("Reshape", "Flatten", "Identity"):
        x = producer[x].input[0]
    dims = graph.input[0].type.tensor_type.shape.dim
    if x != graph.input[0].name or not dims or dims[-1].dim_value != weight.shape[1]:
        return None
    return affine_pair(weight, bias)


def pooled_explainer_onnx(f: Any, tail: Any, feature_shape: tuple[int, int, int],
                          masks: np.ndarray | None = None) -> Any:
    """One ONNX model: input → ``f`` → A · rows(F) → ``g_pooled`` → (B, N + 1, K).

    rows(F) is F as (B, N, C); A is ``masking.pooling_matrix``, so row 0 is the global average
    and row n + 1 the exact GAP of masked map n. The class count is read from the scores at
    run time, so a tail whose declared output leaves it symbolic fuses too.
    """
    from onnx import TensorProto, compose, helper, numpy_helper

    c, h, w = feature_shape
    n = h * w
    (pooled_input,) = tail.graph.input
    if len(pooled_input.type.tensor_type.shape.dim) != 2:
        raise ValueError("g_pooled does not map (B, C) rows to (B, K) scores")
    tail = compose.add_prefix(tail, "tail/")
    (feature,) = [o.name for o in f.graph.output]
    (pooled,) = [i.name for i in tail.graph.input]
    (scores,) = [o.name for o in tail.graph.output]
    consts = [numpy_helper.from_array(np.array([-1, c, n], np.int64), "rc/flat_shape"),
              numpy_helper.from_array(pooling_matrix(n, masks), "rc/mix"),
              numpy_helper.from_array(np.array([-1, c], np.int64), "rc/row_shape"),
              numpy_helper.from_array(np.array([-1, n + 1], np.int64), "rc/images_rows"),
              numpy_helper.from_array(np.array([1], np.int64), "rc/class_axis")]
    rows = [helper.make_node("Reshape", [feature, "rc/flat_shape"], ["rc/flat"]),
            helper.make_node("Transpose", ["rc/flat"], ["rc/rows"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["rc/mix", "rc/rows"], ["rc/mixed"]),
            helper.make_node("Reshape", ["rc/mixed", "rc/row_shape"], [pooled])]
    per_image = [helper.make_node("Shape", [scores], ["rc/scores_shape"]),
                 helper.make_node("Gather", ["rc/scores_shape", "rc/class_axis"], ["rc/classes"],
                                  axis=0),
                 helper.make_node("Concat", ["rc/images_rows", "rc/classes"], ["rc/out_shape"],
                                  axis=0),
                 helper.make_node("Reshape", [scores, "rc/out_shape"], ["scores"])]
    graph = helper.make_graph(
        list(f.graph.node) + rows + list(tail.graph.node) + per_image, "reciprocam_pooled",
        list(f.graph.input), [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
        list(f.graph.initializer) + list(tail.graph.initializer) + consts)
    opsets: dict[str, int] = {}
    for o in list(f.opset_import) + list(tail.opset_import):
        opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    return helper.make_model(graph, ir_version=max(f.ir_version, tail.ir_version),
                             opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
