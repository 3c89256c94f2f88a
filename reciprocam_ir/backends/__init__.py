"""Backend choice: the one place that maps a backend name to its implementation."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

from .base import PRECISIONS, Backend, BackendError, Graph

BACKENDS = {
    "openvino": ("openvino", ".openvino_backend", "OpenVINOBackend"),
    "onnxruntime": ("onnxruntime", ".onnxruntime_backend", "OnnxRuntimeBackend"),
}


def is_installed(package: str) -> bool:
    """True when ``package`` can be imported; a broken or blocked one counts as missing."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends whose engine is installed, preferred first."""
    return [name for name, (pkg, _, _) in BACKENDS.items() if is_installed(pkg)]


def create_backend(
    name: str | None = None, device: str | None = None, precision: str = "auto",
    cache_dir: str | Path | None = None,
) -> Backend:
    """Create a backend by name; ``None`` picks the first installed one (OpenVINO first).

    ``cache_dir``: where compiled (OpenVINO) or optimised (ONNX Runtime) graphs are kept
    so that the next start skips that work.
    """
    if name is None:
        installed = available_backends()
        if not installed:
            raise BackendError(
                "no inference engine installed: pip install .[openvino] or .[onnxruntime]"
            )
        name = "onnxruntime" if (device or "").upper() == "CUDA" and "onnxruntime" in installed \
            else installed[0]
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from {tuple(BACKENDS)})")
    package, module, cls = BACKENDS[name]
    if not is_installed(package):
        raise BackendError(f"backend {name!r} needs the {package} package: pip install .[{name}]")
    impl = getattr(importlib.import_module(module, __name__), cls)
    return impl(device, precision, cache_dir)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--device`` and ``--precision``, as every ``reciprocam`` command has them."""
    parser.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                        help="inference engine (default: OpenVINO if installed)")
    parser.add_argument("--device", default=None,
                        help="CPU, GPU, NPU, AUTO (OpenVINO) or CPU, CUDA (ONNX Runtime)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="OpenVINO inference precision (auto: the device's default, bf16 "
                             "on CPUs that have it); ONNX Runtime runs f32")


__all__ = ["PRECISIONS", "Backend", "BackendError", "Graph", "add_engine_arguments",
           "available_backends", "create_backend"]
