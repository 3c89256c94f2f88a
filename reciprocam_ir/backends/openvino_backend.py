"""OpenVINO: Intel CPU, GPU, NPU (or AUTO) on IR or ONNX graphs."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from .base import Backend, BackendError, Graph

DEVICES = ("CPU", "GPU", "NPU", "AUTO")


class OpenVINOGraph(Graph):
    def __init__(self, compiled: ov.CompiledModel) -> None:
        self._compiled = compiled
        self._local = threading.local()

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def __call__(self, x: np.ndarray) -> np.ndarray:
        request = self._request()
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


class OpenVINOBackend(Backend):
    name = "openvino"
    graph_format = ("ir", "onnx")

    def __init__(self, device: str | None = None, precision: str = "auto") -> None:
        super().__init__(device or "CPU", precision)
        self.core = ov.Core()
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

    def config(self) -> dict[str, str]:
        if self.precision == "auto":
            return {}
        return {"INFERENCE_PRECISION_HINT": self.precision}

    def compile(self, path: Path) -> Graph:
        try:
            return OpenVINOGraph(self.core.compile_model(str(path), self.device, self.config()))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(
                f"OpenVINO cannot compile {path.name} on {self.device}: {first}") from None
