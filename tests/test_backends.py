"""Backend choice and errors; both engines give the same feature map."""

from __future__ import annotations

import numpy as np
import pytest

from reciprocam_ir import BackendError, available_backends, create_backend
from reciprocam_ir.artifact import Artifact


def test_default_backend_prefers_openvino():
    assert available_backends() == ["openvino", "onnxruntime"]
    assert create_backend().name == "openvino"


@pytest.mark.parametrize("name, device, precision, match", [
    ("tensorrt", None, "auto", "unknown backend 'tensorrt'"),
    ("openvino", "TPU", "auto", "not an OpenVINO device"),
    ("openvino", "CPU", "f8", "unknown precision"),
    ("onnxruntime", "NPU", "auto", "not an ONNX Runtime device"),
    ("onnxruntime", "CPU", "f16", "f32 only"),
])
def test_bad_choices(name, device, precision, match):
    with pytest.raises(BackendError, match=match):
        create_backend(name, device, precision)


def test_cuda_without_onnxruntime_gpu_is_a_clear_error():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu with CUDA")
    with pytest.raises(BackendError, match=r"CUDAExecutionProvider.*pip install \.\[gpu\]"):
        create_backend("onnxruntime", "CUDA")


def test_engines_agree_on_f(resnet18_dir):
    artifact = Artifact.load(resnet18_dir)
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    ov = create_backend("openvino", "CPU", "f32").compile(artifact.graph_path("f", "ir"))(x)
    ort = create_backend("onnxruntime").compile(artifact.graph_path("f", "onnx"))(x)
    assert ov.shape == (2, 512, 7, 7)
    np.testing.assert_allclose(ov, ort, atol=1e-4 * np.abs(ort).max())


def test_openvino_reads_onnx_when_no_ir(resnet18_dir):
    artifact = Artifact.load(resnet18_dir)
    x = np.zeros((1, 3, 224, 224), np.float32)
    engine = create_backend("openvino", "CPU", "f32")
    a = engine.compile(artifact.graph_path("f", "onnx"))(x)
    b = engine.compile(artifact.graph_path("f", "ir"))(x)
    np.testing.assert_allclose(a, b, atol=1e-4)
