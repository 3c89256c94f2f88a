"""Backend choice and errors; both engines give the same feature map; compile caches."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from reciprocam_ir import BackendError, ReciproCAM, available_backends, create_backend
from reciprocam_ir.artifact import Artifact, sha256_file


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


@pytest.mark.filterwarnings("ignore:Specified provider")  # ONNX Runtime's own warning
def test_a_silent_fallback_to_the_cpu_is_refused(resnet18_dir):
    """ONNX Runtime only warns when the CUDA provider cannot start and runs on the CPU: the
    backend refuses such a session instead of timing or serving the CPU as CUDA. Here the
    provider is missing from a CPU-only build, which falls back the same way."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has onnxruntime-gpu with CUDA")
    backend = create_backend("onnxruntime", "CPU")
    backend.device, backend.providers = "CUDA", ["CUDAExecutionProvider", "CPUExecutionProvider"]
    artifact = Artifact.load(resnet18_dir)
    with pytest.raises(BackendError, match=r"could not run f\.onnx on CUDA: "
                                           r"CUDAExecutionProvider did not start"):
        backend.compile(artifact.graph_path("f", "onnx"))


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


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A helper-built graph cut before its pooling: f and g are compiled from their files."""
    from export.graphfile.pipeline import export_graph_file
    from graph_models import tiny_classifier

    d = tmp_path_factory.mktemp("tiny")
    return export_graph_file(tiny_classifier(d / "tiny.onnx"), layer="r2", out=d / "artifact")


def double_float_weights(graph: Path) -> Path:
    """Double every float32 weight of an ONNX graph or an IR's .bin, in place, keeping the
    file's size and time stamps (as a tar or ``cp -p`` restore would); return the file."""
    import xml.etree.ElementTree as ElementTree

    import onnx
    from onnx import numpy_helper

    if graph.suffix == ".xml":
        target = graph.with_suffix(".bin")
        data = bytearray(target.read_bytes())
        for layer in ElementTree.parse(graph).iter("layer"):
            const = layer.find("data")
            if layer.get("type") == "Const" and const.get("element_type") == "f32":
                start, size = int(const.get("offset")), int(const.get("size"))
                values = np.frombuffer(bytes(data[start : start + size]), np.float32) * 2
                data[start : start + size] = values.tobytes()
    else:
        target = graph
        model = onnx.load(str(graph))
        for tensor in model.graph.initializer:
            if tensor.data_type == onnx.TensorProto.FLOAT:
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 2,
                                                        tensor.name))
        data = model.SerializeToString()
    before = target.stat()
    target.write_bytes(bytes(data))
    assert target.stat().st_size == before.st_size
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    return target


@pytest.mark.parametrize("backend, graph", [("openvino", "f.xml"), ("onnxruntime", "f.onnx")])
def test_the_compile_cache_follows_the_verified_bytes(tiny_dir, tmp_path, image, backend, graph):
    """Weights replaced in place, same size and time stamp, listed in the manifest: the run
    uses them, not a compiled form of the old ones left in --cache-dir."""
    folder, cache = tmp_path / "artifact", tmp_path / "cache"
    shutil.copytree(tiny_dir, folder)
    options = {"backend": backend, "precision": "f32", "explain_graph": False}  # f runs
    before = ReciproCAM(folder, cache_dir=cache, **options).explain(image)
    changed = double_float_weights(folder / graph)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][changed.name] = sha256_file(changed)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    fresh = ReciproCAM(folder, **options).explain(image)
    cached = ReciproCAM(folder, cache_dir=cache, **options).explain(image)
    assert np.abs(fresh.scores - before.scores).max() > 1e-3
    np.testing.assert_allclose(cached.scores, fresh.scores, atol=1e-5)
    np.testing.assert_allclose(cached.saliency, fresh.saliency, atol=1e-5)


@pytest.mark.parametrize("backend, entries, count", [
    ("onnxruntime", "*.ort.onnx", 2),  # f and g
    ("openvino", "openvino-*/*.blob", 4),  # f and g, each also as its static copy for the batch
])
def test_a_damaged_cache_entry_is_rebuilt(tiny_dir, tmp_path, image, backend, entries, count):
    """An entry cut short (a crash mid-write before writes were atomic, a full disk) neither
    fails the next run nor stays damaged; no temporary files are left behind."""
    cache = tmp_path / "cache"
    options = {"backend": backend, "precision": "f32", "explain_graph": False}  # f and g run
    reference = ReciproCAM(tiny_dir, **options).explain(image, top_k=2)
    ReciproCAM(tiny_dir, cache_dir=cache, **options).explain(image)
    sizes = {p: p.stat().st_size for p in cache.glob(entries)}
    assert len(sizes) == count
    for path, size in sizes.items():
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    exp = ReciproCAM(tiny_dir, cache_dir=cache, **options).explain(image, top_k=2)
    np.testing.assert_allclose(exp.saliency, reference.saliency, atol=1e-6)
    repaired = {p: p.stat().st_size for p in cache.glob(entries)}
    assert repaired.keys() == sizes.keys()
    assert all(repaired[p] > 0.9 * size for p, size in sizes.items())  # rewritten whole
    assert not [p for p in cache.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_openvino_runs_a_static_copy_of_the_batch_it_runs(resnet18_dir, image):
    """A dynamic-batch graph runs as a static copy compiled for each batch it is given (up
    to the backend's bound, then the dynamic graph), and the maps equal the dynamic graph's."""
    from reciprocam_ir.backends.openvino_backend import OpenVINOBackend

    static = OpenVINOBackend("CPU", "f32", static_shapes=2)
    dynamic = OpenVINOBackend("CPU", "f32", static_shapes=0)
    images = [image, image[::-1], image[:, ::-1]]
    cam = ReciproCAM(resnet18_dir, backend=static, batch_size=2)
    exp = cam.explain(images)
    graph = cam.graph_path.run.__self__
    batches = [((2, 3, 224, 224),), ((1, 3, 224, 224),)]
    assert graph.static_shapes == batches
    for (shape,) in batches:
        declared = graph.compiled_for(np.zeros(shape, np.float32)).inputs[0].get_partial_shape()
        assert declared.is_static and tuple(declared.to_shape()) == shape
    third = graph.compiled_for(np.zeros((3, 3, 224, 224), np.float32))
    assert third.inputs[0].get_partial_shape().is_dynamic and graph.static_shapes == batches

    reference = ReciproCAM(resnet18_dir, backend=dynamic, batch_size=2)
    assert reference.graph_path.run.__self__.compiled_for(
        np.zeros((2, 3, 224, 224), np.float32)).inputs[0].get_partial_shape().is_dynamic
    expected = reference.explain(images)
    np.testing.assert_array_equal(exp.targets, expected.targets)
    np.testing.assert_allclose(exp.saliency, expected.saliency, atol=1e-5)
    np.testing.assert_allclose(exp.scores, expected.scores, rtol=1e-5, atol=1e-5)
    assert reference.graph_path.run.__self__.static_shapes == []
