"""``reciprocam-export model.onnx``: cut a bare ONNX classifier, verify, explain it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from conftest import TORCH_BLOCK
from conftest import export_refused as refused
from conftest import read_manifest as manifest
from export import cli
from export.errors import ExportError
from export.graphfile.onnx_cut import OnnxCutter
from export.graphfile.pipeline import export_graph_file
from graph_models import (
    CLASSES,
    SIZE,
    TINY_CUTS,
    channels_last_classifier,
    quantize,
    resnet18_onnx,
    tiny_classifier,
    to_ir,
    vector_classifier,
)
from reciprocam_ir import ReciproCAM
from reciprocam_ir.artifact import Artifact

BACKENDS = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_models")
    return {
        "tiny": tiny_classifier(d / "tiny.onnx"),
        "nhwc": tiny_classifier(d / "tiny_nhwc.onnx", layout="NHWC"),
        "softmax": tiny_classifier(d / "tiny_softmax.onnx", softmax=True),
        "two": tiny_classifier(d / "two_inputs.onnx", second_input=True),
        "vector": vector_classifier(d / "vector.onnx"),
        "keras": channels_last_classifier(d / "keras_style.onnx"),
        "dynamic": tiny_classifier(d / "dynamic.onnx", dynamic_size=True),
        "coupled": tiny_classifier(d / "coupled.onnx", batch_coupled=True),
        "constant": tiny_classifier(d / "constant.onnx", constant=True),
    }


def tensor_of(path, name: str, x: np.ndarray) -> np.ndarray:
    """Tensor ``name`` of the ONNX graph at ``path`` on ``x``, by ONNX Runtime."""
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {model.graph.input[0].name: x})[0]


def weights_of(path, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
                if i.name == name)


def linear_head_maps(feature: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                     targets: np.ndarray) -> np.ndarray:
    """ReciproCAM maps (K, h, w) by hand for a GAP + linear head: y_n = W^T F[:, n] / N + b.

    ``feature`` (1, C, h, w), ``weight`` (C, classes).
    """
    c, h, w = feature.shape[1:]
    scores = feature[0].reshape(c, h * w).T / (h * w) @ weight + bias
    maps = scores[:, targets].T
    lo, hi = maps.min(axis=1, keepdims=True), maps.max(axis=1, keepdims=True)
    return ((maps - lo) / (hi - lo)).reshape(len(targets), h, w)


def test_cuts_of_a_helper_built_graph(files):
    graph = OnnxCutter(files["tiny"])
    assert [c.name for c in graph.cuts] == TINY_CUTS
    assert graph.find(None).name == "pool" and graph.find(None).shape == (8, 8, 8)
    assert graph.find("relu2").name == "r2"  # the producing node's name works too
    assert graph.input.layout == "NCHW" and graph.input.size == (SIZE, SIZE)


def test_auto_and_named_cut_explain(files, tmp_path, image):
    auto = export_graph_file(files["tiny"], out=tmp_path / "auto")
    named = export_graph_file(files["tiny"], layer="r2", fmt="onnx", out=tmp_path / "named")
    m, n = manifest(auto), manifest(named)
    assert m["target_layer"] == "pool" and m["feature"]["shape"] == [8, 8, 8]
    assert n["target_layer"] == "r2" and n["feature"]["shape"] == [8, 16, 16]
    assert m["g_starts_with_gap"] and not n["g_starts_with_gap"]  # r2 feeds MaxPool, not GAP
    assert m["check"]["max_abs_error"] < 1e-5 and set(m["check"]["per_backend"]) == set(BACKENDS)
    assert m["input"]["resize"] == "direct" and m["input"]["shape"] == [1, 3, SIZE, SIZE]
    assert m["source"]["format"] == "onnx" and m["output"]["num_classes"] == CLASSES
    assert not list(named.glob("*.xml"))
    for backend in BACKENDS:
        exp = ReciproCAM(auto, backend=backend, precision="f32").explain(image, top_k=2)
        assert exp.saliency.shape == (1, 2, 8, 8)
        assert np.isclose(exp.saliency.max(), 1) and np.isclose(exp.saliency.min(), 0)
    exp = ReciproCAM(named, backend="onnxruntime").explain(image)
    assert exp.saliency.shape == (1, 1, 16, 16)


def test_g_has_a_free_batch_axis(files, tmp_path):
    out = export_graph_file(files["tiny"], layer="a", fmt="onnx", out=tmp_path / "a")
    g = ort.InferenceSession(str(out / "g.onnx"))
    assert g.get_inputs()[0].shape[0] == "batch" and g.get_inputs()[0].name == "feature"
    assert g.run(None, {"feature": np.zeros((7, 8, 16, 16), np.float32)})[0].shape == (7, 5)


def test_graphs_declare_static_output_shapes(files, tmp_path):
    """Only the batch is symbolic in what the graphs declare (the class count is written)."""
    out = export_graph_file(files["tiny"], fmt="onnx", out=tmp_path / "declared")
    for role, dims in (("f", ["batch", 8, 8, 8]), ("g", ["batch", CLASSES]),
                       ("g_pooled", ["batch", CLASSES])):
        shape = onnx.load(str(out / f"{role}.onnx")).graph.output[0].type.tensor_type.shape
        assert [d.dim_param or d.dim_value for d in shape.dim] == dims, role


def test_channels_last_tail_is_cut_at_its_nchw_map(files, tmp_path, image, capsys):
    """tf2onnx/Keras style: the last 4-D tensor is N x h x w x C; the cut is the NCHW map."""
    graph = OnnxCutter(files["keras"])
    assert "nhwc" not in [c.name for c in graph.cuts]
    assert graph.find(None).name == "r2" and graph.find(None).shape == (16, 8, 8)
    assert cli.main([str(files["keras"]), "--list-layers"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert rows[-1].split()[0] == "r2" and rows[-1].endswith("(default)")
    assert "nhwc" not in [row.split()[0] for row in rows]

    out = export_graph_file(files["keras"], out=tmp_path / "keras")
    m = manifest(out)
    assert m["target_layer"] == "r2" and m["feature"]["shape"] == [16, 8, 8]
    assert m["g_starts_with_gap"]  # Transpose then ReduceMean over axes 1, 2 is a GAP
    x = ReciproCAM(out, backend="onnxruntime").preprocessing(image)
    feature = tensor_of(files["keras"], "r2", x)
    weight, bias = weights_of(files["keras"], "dense"), weights_of(files["keras"], "dense_bias")
    for backend in BACKENDS:
        exp = ReciproCAM(out, backend=backend, precision="f32").explain(image, top_k=3)
        np.testing.assert_allclose(
            exp.saliency[0], linear_head_maps(feature, weight, bias, exp.targets[0]), atol=1e-5)


def test_dynamic_size_graph_at_48x192(files, tmp_path, image):
    """A graph with dynamic H and W, exported at a non-square size: maps are h x w of it."""
    out = tmp_path / "wide"
    assert cli.main([str(files["dynamic"]), "--input-size", "48x192", "--out", str(out),
                     "-q"]) == 0
    m = manifest(out)
    assert m["input"]["shape"] == [1, 3, 48, 192] and m["feature"]["shape"] == [8, 24, 96]
    assert m["target_layer"] == "pool"
    x = ReciproCAM(out, backend="onnxruntime").preprocessing(image)
    assert x.shape == (1, 3, 48, 192)
    feature = tensor_of(files["dynamic"], "pool", x)
    weight, bias = weights_of(files["dynamic"], "wfc").T, weights_of(files["dynamic"], "bfc")
    for backend in BACKENDS:
        exp = ReciproCAM(out, backend=backend, precision="f32").explain(image, top_k=2)
        assert exp.saliency.shape == (1, 2, 24, 96)
        # N = 2304: a score moves by ~1e-7 of the bias between positions, so f32 rounding shows
        np.testing.assert_allclose(
            exp.saliency[0], linear_head_maps(feature, weight, bias, exp.targets[0]), atol=1e-3)


def test_softmax_is_dropped_or_kept(files, tmp_path, image):
    out = export_graph_file(files["softmax"], out=tmp_path / "logits")
    kept = export_graph_file(files["softmax"], fmt="onnx", out=tmp_path / "probs",
                             keep_softmax=True)
    m, k = manifest(out)["output"], manifest(kept)["output"]
    assert m["softmax_removed"] and m["logits"]
    assert not k["softmax_removed"] and not k["logits"]
    cam = ReciproCAM(out, backend="onnxruntime")
    x = cam.preprocessing(image)
    original = ort.InferenceSession(str(files["softmax"])).run(None, {"image": x})[0]
    logits = cam.explain(image).scores
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, original, atol=1e-6)
    np.testing.assert_allclose(ReciproCAM(kept, backend="onnxruntime").explain(image).scores,
                               original, atol=1e-6)


def test_nhwc_input_matches_its_nchw_twin(files, tmp_path, image):
    nhwc = export_graph_file(files["nhwc"], out=tmp_path / "nhwc")
    nchw = export_graph_file(files["tiny"], fmt="onnx", out=tmp_path / "nchw")
    m = manifest(nhwc)["input"]
    assert m["layout"] == "NHWC" and m["shape"] == [1, SIZE, SIZE, 3]
    assert Artifact.load(nhwc).preprocessing.size == (SIZE, SIZE)
    ref = ReciproCAM(nchw, backend="onnxruntime").explain(image, top_k=3)
    for backend in BACKENDS:
        exp = ReciproCAM(nhwc, backend=backend, precision="f32").explain(image, top_k=3)
        np.testing.assert_array_equal(exp.targets, ref.targets)
        np.testing.assert_allclose(exp.saliency, ref.saliency, atol=1e-5)


@pytest.mark.parametrize("key, extra, match", [
    ("two", (), "2 inputs (image, bias)"),
    ("vector", (), "expected one image tensor"),
    ("tiny", ("--layer", "c2"), "layer 'c2' is not a valid cut"),
    ("tiny", ("--layer", "conv2"), "layer 'conv2' is not a valid cut"),
    ("tiny", ("--layer", "r3"), "unknown layer 'r3'"),
    ("tiny", ("--layer", "gap"), "not a valid cut"),
    ("tiny", ("--input-size", "32"), "--input-size 32 does not match"),
    ("tiny", ("--weights", "none"), "--weights does not apply"),
    ("tiny", ("--std", "0", "1", "1"), "invalid preprocessing"),
    ("tiny", ("--input-size", "16x32"), "--input-size 16x32 does not match"),
    ("keras", ("--layer", "nhwc"), "laid out NHWC (channels last), not NCHW"),
    ("keras", ("--layer", "to_nhwc"), "laid out NHWC (channels last), not NCHW"),
    ("coupled", (), "scores change with the other images of its batch"),
    ("constant", (), "scores are the same for two different inputs"),
])
def test_bad_graph_inputs_are_refused(capsys, tmp_path, files, key, extra, match):
    assert match in refused(capsys, tmp_path, str(files[key]), *extra)


def test_unreadable_and_missing_files(capsys, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert "not a readable ONNX model" in refused(capsys, tmp_path, str(junk))
    assert "not found" in refused(capsys, tmp_path, str(tmp_path / "none.onnx"))
    assert "apply only to .onnx/.xml" in refused(capsys, tmp_path, "resnet18", "--scale", "1")


def test_list_layers(capsys, files):
    assert cli.main([str(files["tiny"]), "--list-layers"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == TINY_CUTS
    assert lines[-1].endswith("(default)")


def test_preprocessing_flags(files, tmp_path):
    out = tmp_path / "flags"
    assert cli.main([str(files["tiny"]), "--out", str(out), "-q", "--mean", "0.5", "0.5", "0.5",
                     "--std", "0.25", "0.25", "0.25", "--scale", "1", "--color", "BGR",
                     "--resize-size", "20", "--format", "onnx"]) == 0
    m = manifest(out)["input"]
    assert (m["mean"], m["std"], m["scale"], m["color"]) == ([0.5] * 3, [0.25] * 3, 1.0, "BGR")
    assert (m["resize"], m["resize_size"]) == ("shorter_side_crop", 20)


BLOCK_TORCH = TORCH_BLOCK + """
from export.cli import main
for model, out in zip(sys.argv[1::2], sys.argv[2::2]):
    assert main([model, "--out", out, "-q"]) == 0
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("torch-free ok")
"""


def test_graph_files_export_without_torch(files, tmp_path):
    xml = to_ir(files["nhwc"])
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(files["softmax"]),
                           str(tmp_path / "a"), str(xml), str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch-free ok" in proc.stdout
    Artifact.load(tmp_path / "a")
    Artifact.load(tmp_path / "b")


@pytest.fixture(scope="module")
def resnet18_file(resnet18_weights):
    return resnet18_onnx(resnet18_weights)


def test_resnet18_agrees_with_the_pytorch_path(resnet18_file, resnet18_dir, tmp_path, photos):
    """torchvision resnet18 exported whole to ONNX, cut here = the PyTorch-path artifact."""
    torch_manifest = manifest(resnet18_dir)
    out = export_graph_file(resnet18_file, fmt="onnx", out=tmp_path / "r18", resize_size=256)
    assert manifest(out)["feature"] == torch_manifest["feature"]
    assert manifest(out)["target_layer"] == "/layer4/layer4.1/relu_1/Relu_output_0"
    images = list(photos.values())[:2]
    for backend in BACKENDS:
        ours = ReciproCAM(out, backend=backend, precision="f32").explain(images, top_k=3)
        theirs = ReciproCAM(resnet18_dir, backend=backend, precision="f32").explain(images,
                                                                                   top_k=3)
        np.testing.assert_array_equal(ours.targets, theirs.targets)
        np.testing.assert_allclose(ours.saliency, theirs.saliency, atol=1e-4)
        np.testing.assert_allclose(ours.scores, theirs.scores, atol=1e-4, rtol=1e-4)


def test_int8_model_is_cut_and_explained(files, tmp_path, photos):
    """ONNX Runtime static INT8 quantisation (QDQ) of the helper model: cut, explain, compare."""
    f32 = export_graph_file(files["tiny"], fmt="onnx", out=tmp_path / "f32")
    float_cam = ReciproCAM(f32, backend="onnxruntime")
    images = list(photos.values())
    int8 = quantize(files["tiny"], tmp_path / "tiny_int8.onnx",
                    [float_cam.preprocessing(im) for im in images])
    out = export_graph_file(int8, out=tmp_path / "int8")
    m = manifest(out)
    assert m["target_layer"].startswith("pool") and m["feature"]["shape"] == [8, 8, 8]
    assert m["check"]["relative_error"] <= 1e-4  # vs the same runtime's run of the original
    targets = float_cam.explain(images).targets[:, 0]
    ref = np.concatenate([float_cam.explain(im, targets=int(t)).saliency
                          for im, t in zip(images, targets, strict=True)])
    for backend in BACKENDS:
        cam = ReciproCAM(out, backend=backend, precision="f32")
        q = np.concatenate([cam.explain(im, targets=int(t)).saliency
                            for im, t in zip(images, targets, strict=True)])
        # pooled over the photos: INT8 can flatten one photo's map to a constant (no Pearson r)
        r = np.corrcoef(q.ravel(), ref.ravel())[0, 1]
        print(f"{backend}: int8 vs f32 maps mean |diff| {np.abs(q - ref).mean():.3f}, r {r:.3f}")
        assert r > 0.5  # a random 5-class toy is the worst case; see scripts/int8_maps.py


def test_non_graph_suffix_is_not_a_file_model():
    with pytest.raises(ExportError, match="expected an .onnx or .xml"):
        from export.graphfile.pipeline import open_graph

        open_graph("model.pb")
