"""ONNX Runtime: CPU, or CUDA on NVIDIA GPUs with onnxruntime-gpu."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from .base import Backend, BackendError, Graph

PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}


class OnnxRuntimeGraph(Graph):
    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input: np.ascontiguousarray(x, np.float32)})[:1]
        return np.asarray(out, dtype=np.float32)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    graph_format = ("onnx",)

    def __init__(self, device: str | None = None, precision: str = "auto") -> None:
        super().__init__((device or "CPU").upper(), precision)
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

    def compile(self, path: Path) -> Graph:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), options, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types per failure
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"ONNX Runtime cannot load {path.name}: {first}") from None
        return OnnxRuntimeGraph(session)
