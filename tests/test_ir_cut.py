"""``reciprocam-export model.xml``: cut an OpenVINO IR classifier, verify, explain it."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from conftest import export_refused as refused
from conftest import read_manifest as manifest
from export.graphfile.ir_cut import IrCutter
from export.graphfile.pipeline import export_graph_file
from graph_models import (
    CLASSES,
    SIZE,
    channels_last_classifier,
    native_ir,
    native_ir_channels_last,
    native_ir_repeated_names,
    quantize,
    resnet18_onnx,
    tiny_classifier,
    to_ir,
)
from reciprocam_ir import ReciproCAM

IR_CUTS = ["conv1/WithoutBiases", "conv1", "relu1", "add", "relu2", "maxpool"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ir_models")
    return {
        "tiny": to_ir(tiny_classifier(d / "tiny.onnx")),
        "tiny_onnx": d / "tiny.onnx",
        "nhwc": to_ir(tiny_classifier(d / "tiny_nhwc.onnx", layout="NHWC")),
        "softmax": to_ir(tiny_classifier(d / "tiny_softmax.onnx", softmax=True)),
        "two": to_ir(tiny_classifier(d / "two_inputs.onnx", second_input=True)),
        "native": native_ir(d / "native.xml"),
        "keras": to_ir(channels_last_classifier(d / "keras_style.onnx")),
        "keras_onnx": d / "keras_style.onnx",
        "native_nhwc": native_ir_channels_last(d / "native_nhwc.xml"),
        "repeated": native_ir_repeated_names(d / "repeated.xml"),
        "dynamic": to_ir(tiny_classifier(d / "dynamic.onnx", dynamic_size=True)),
        "dynamic_onnx": d / "dynamic.onnx",
        "coupled": to_ir(tiny_classifier(d / "coupled.onnx", batch_coupled=True)),
    }


def run_ir(path, x: np.ndarray) -> np.ndarray:
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled({0: x})[0]


def test_cuts_by_node_and_tensor_name(files):
    graph = IrCutter(files["tiny"])
    assert [c.name for c in graph.cuts] == IR_CUTS
    assert graph.find(None).name == "maxpool" and graph.find(None).shape == (8, 8, 8)
    assert graph.find("r2").name == "relu2"  # the ONNX tensor name survives as a tensor name


def test_auto_and_named_cut_explain(files, tmp_path, image):
    auto = export_graph_file(files["tiny"], out=tmp_path / "auto")
    named = export_graph_file(files["tiny"], layer="relu1", out=tmp_path / "named")
    m, n = manifest(auto), manifest(named)
    assert m["target_layer"] == "maxpool" and m["feature"]["shape"] == [8, 8, 8]
    assert n["target_layer"] == "relu1" and n["feature"]["shape"] == [8, 16, 16]
    assert m["graphs"] == {"f": {"ir": "f.xml"}, "g": {"ir": "g.xml"},
                           "g_pooled": {"ir": "g_pooled.xml"}, "explain": {"ir": "explain.xml"}}
    assert m["source"]["format"] == "ir" and m["output"]["num_classes"] == CLASSES
    assert m["check"]["relative_error"] <= 1e-5 and list(m["check"]["per_backend"]) == [
        "openvino"]
    assert not list(auto.glob("*.onnx"))
    exp = ReciproCAM(auto, backend="openvino", precision="f32").explain(image, top_k=2)
    assert exp.saliency.shape == (1, 2, 8, 8)
    onnx_twin = export_graph_file(files["tiny_onnx"], fmt="onnx", out=tmp_path / "twin")
    ref = ReciproCAM(onnx_twin, backend="onnxruntime").explain(image, top_k=2)
    np.testing.assert_allclose(exp.saliency, ref.saliency, atol=1e-5)
    exp = ReciproCAM(named, backend="openvino").explain(image)
    assert exp.saliency.shape == (1, 1, 16, 16)


def test_g_has_a_free_batch_axis(files, tmp_path):
    out = export_graph_file(files["tiny"], layer="add", out=tmp_path / "a")
    g = ov.Core().read_model(str(out / "g.xml"))
    assert g.input(0).get_partial_shape()[0].is_dynamic and g.input(0).any_name == "feature"
    compiled = ov.Core().compile_model(g, "CPU")
    assert compiled({0: np.zeros((7, 8, 16, 16), np.float32)})[0].shape == (7, CLASSES)


def test_native_openvino_model_with_softmax(files, tmp_path, image):
    """An IR built with the OpenVINO opset API: Softmax dropped by default, or kept."""
    out = export_graph_file(files["native"], out=tmp_path / "native")
    kept = export_graph_file(files["native"], out=tmp_path / "kept", keep_softmax=True)
    m = manifest(out)
    assert m["target_layer"] == "relu" and m["feature"]["shape"] == [6, 8, 8]
    assert m["output"]["softmax_removed"] and m["output"]["logits"]
    assert not manifest(kept)["output"]["logits"]
    assert m["input"]["source_name"] == "pixels"
    cam = ReciproCAM(out, backend="openvino", precision="f32")
    original = ov.Core().compile_model(str(files["native"]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    probs = original({0: cam.preprocessing(image)})[0]
    logits = cam.explain(image).scores
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs,
                               atol=1e-6)
    np.testing.assert_allclose(ReciproCAM(kept, backend="openvino", precision="f32")
                               .explain(image).scores, probs, atol=1e-6)


def test_softmax_terminated_ir(files, tmp_path):
    m = manifest(export_graph_file(files["softmax"], out=tmp_path / "s"))["output"]
    assert m["softmax_removed"] and m["logits"]


def test_nhwc_ir_matches_nchw(files, tmp_path, image):
    nhwc = export_graph_file(files["nhwc"], out=tmp_path / "nhwc")
    nchw = export_graph_file(files["tiny"], out=tmp_path / "nchw")
    m = manifest(nhwc)
    assert m["input"]["layout"] == "NHWC" and m["input"]["shape"] == [1, SIZE, SIZE, 3]
    assert m["target_layer"] == "maxpool"
    ref = ReciproCAM(nchw, backend="openvino", precision="f32").explain(image, top_k=3)
    exp = ReciproCAM(nhwc, backend="openvino", precision="f32").explain(image, top_k=3)
    np.testing.assert_array_equal(exp.targets, ref.targets)
    np.testing.assert_allclose(exp.saliency, ref.saliency, atol=1e-5)


def test_channels_last_tail_of_a_converted_graph(files, tmp_path, image):
    """The tf2onnx/Keras-style graph as IR: cut at the NCHW map, as its ONNX twin is."""
    out = export_graph_file(files["keras"], out=tmp_path / "keras")
    m = manifest(out)
    assert m["target_layer"] == "relu2" and m["feature"]["shape"] == [16, 8, 8]
    assert m["g_starts_with_gap"]  # ReduceMean over H, W without keep_dims is a GAP too
    twin = export_graph_file(files["keras_onnx"], fmt="onnx", out=tmp_path / "twin")
    ref = ReciproCAM(twin, backend="onnxruntime").explain(image, top_k=3)
    exp = ReciproCAM(out, backend="openvino", precision="f32").explain(image, top_k=3)
    np.testing.assert_array_equal(exp.targets, ref.targets)
    np.testing.assert_allclose(exp.saliency, ref.saliency, atol=1e-5)


def test_native_channels_last_head_is_not_a_cut(files, tmp_path, image):
    """An IR head that transposes to N x h x w x C before pooling: the NCHW map is the cut."""
    graph = IrCutter(files["native_nhwc"])
    assert [c.name for c in graph.cuts] == ["conv", "relu"]
    out = export_graph_file(files["native_nhwc"], out=tmp_path / "nhwc")
    assert manifest(out)["feature"]["shape"] == [6, 8, 8]
    exp = ReciproCAM(out, backend="openvino", precision="f32").explain(image)
    assert exp.saliency.shape == (1, 1, 8, 8)


def test_repeated_friendly_names_cut_the_right_node(files, tmp_path, image):
    """OpenVINO does not keep friendly names unique: the cut is found by identity."""
    graph = IrCutter(files["repeated"])
    assert [c.name for c in graph.cuts] == ["conv", "act", "conv#2", "act#2"]
    out = export_graph_file(files["repeated"], out=tmp_path / "second")
    m = manifest(out)
    assert m["target_layer"] == "act#2" and m["feature"]["shape"] == [6, 4, 4]
    x = ReciproCAM(out, backend="openvino").preprocessing(image)
    assert run_ir(out / "f.xml", x).shape == (1, 6, 4, 4)
    first = export_graph_file(files["repeated"], layer="act", out=tmp_path / "first")
    assert run_ir(first / "f.xml", x).shape == (1, 6, 8, 8)


def test_dynamic_size_ir_at_48x192(files, tmp_path, image):
    out = export_graph_file(files["dynamic"], size=(48, 192), out=tmp_path / "wide")
    m = manifest(out)
    assert m["input"]["shape"] == [1, 3, 48, 192] and m["feature"]["shape"] == [8, 24, 96]
    twin = export_graph_file(files["dynamic_onnx"], size=(48, 192), fmt="onnx",
                             out=tmp_path / "twin")
    exp = ReciproCAM(out, backend="openvino", precision="f32").explain(image, top_k=2)
    ref = ReciproCAM(twin, backend="onnxruntime").explain(image, top_k=2)
    assert exp.saliency.shape == (1, 2, 24, 96)
    np.testing.assert_array_equal(exp.targets, ref.targets)
    np.testing.assert_allclose(exp.saliency, ref.saliency, atol=1e-3)


@pytest.mark.parametrize("key, extra, match", [
    ("two", (), "2 inputs"),
    ("native_nhwc", ("--layer", "to_nhwc"), "laid out NHWC (channels last)"),
    ("coupled", (), "scores change with the other images of its batch"),
    ("tiny", ("--layer", "conv2"), "layer 'conv2' is not a valid cut"),
    ("tiny", ("--layer", "c2"), "layer 'c2' is not a valid cut"),
    ("tiny", ("--layer", "nope"), "unknown layer 'nope'"),
    ("tiny", ("--format", "onnx"), "cannot be written as ONNX"),
    ("tiny", ("--input-size", "64"), "--input-size 64 does not match"),
])
def test_bad_ir_inputs_are_refused(capsys, tmp_path, files, key, extra, match):
    assert match in refused(capsys, tmp_path, str(files[key]), *extra)


def test_unreadable_ir(capsys, tmp_path):
    junk = tmp_path / "junk.xml"
    junk.write_text("<net>")
    assert "not a readable OpenVINO IR model" in refused(capsys, tmp_path, str(junk))


def test_int8_ir_is_cut_and_explained(files, tmp_path, image):
    """ONNX Runtime's INT8 (QDQ) model converted to IR (FakeQuantize): cut and explained."""
    rng = np.random.default_rng(4)
    calib = [rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(8)]
    xml = to_ir(quantize(files["tiny_onnx"], tmp_path / "int8.onnx", calib))
    out = export_graph_file(xml, out=tmp_path / "int8")
    m = manifest(out)
    assert m["check"]["relative_error"] <= 1e-4 and m["feature"]["shape"] == [8, 8, 8]
    exp = ReciproCAM(out, backend="openvino", precision="f32").explain(image, top_k=2)
    assert exp.saliency.shape == (1, 2, 8, 8) and np.isfinite(exp.saliency).all()


def test_resnet18_ir_agrees_with_the_pytorch_path(resnet18_weights, resnet18_dir, tmp_path,
                                                  photos):
    xml = to_ir(resnet18_onnx(resnet18_weights))
    out = export_graph_file(xml, out=tmp_path / "r18", resize_size=256)
    assert manifest(out)["target_layer"] == "/layer4/layer4.1/relu_1/Relu"
    images = list(photos.values())[:2]
    ours = ReciproCAM(out, backend="openvino", precision="f32").explain(images, top_k=3)
    theirs = ReciproCAM(resnet18_dir, backend="openvino", precision="f32").explain(images,
                                                                                   top_k=3)
    np.testing.assert_array_equal(ours.targets, theirs.targets)
    np.testing.assert_allclose(ours.saliency, theirs.saliency, atol=1e-4)
