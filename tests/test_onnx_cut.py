"""``reciprocam-export model.onnx``: cut a bare ONNX classifier, verify, explain it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from conftest import TORCH_BLOCK
from conftest import export_refused as refused
from conftest import read_manifest as manifest
from export import cli
from export.errors import ExportError
from export.graph_export import export_graph_file
from export.onnx_cut import OnnxGraph
from graph_models import (
    CLASSES,
    SIZE,
    TINY_CUTS,
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
    }


def test_cuts_of_a_helper_built_graph(files):
    graph = OnnxGraph(files["tiny"])
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
        from export.graph_export import open_graph

        open_graph("model.pb")
