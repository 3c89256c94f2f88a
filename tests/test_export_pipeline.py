"""Exporter: every family cuts, verifies and reproduces the model on the real runtimes."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from export.torch.pipeline import export_artifact, prepare
from reciprocam_ir.artifact import Artifact, sha256_file
from reciprocam_ir.masking import masked_batch

FAMILIES = {  # name: (default layer, g starts with GAP)
    "resnet18": ("layer4", True),
    "resnet50": ("layer4", True),
    "vgg16": ("features", False),
    "mobilenet_v3_large": ("features", True),
    "efficientnet_b0": ("features", True),
    "densenet121": ("features", False),
    "regnet_y_400mf": ("trunk_output", True),
}


def run_onnx(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


CUT_ONLY = {"vgg16"}
"""Families whose default cut is checked without writing 528 MB of weights to ONNX: the
export of a flatten head is the same code the smaller families and the toys run."""


@pytest.mark.parametrize("name", sorted(CUT_ONLY))
def test_family_default_cut(name):
    _, graph, _ = prepare(name, "none", None)
    cut = graph.default_cut()
    layer, gap = FAMILIES[name]
    assert cut.name == layer
    assert (graph.split(cut).g_pooled is not None) is gap


@pytest.mark.parametrize("name", [n for n in FAMILIES if n not in CUT_ONLY])
def test_family_exports_and_reproduces_model(name, tmp_path):
    out = export_artifact(name, weights="none", fmt="onnx", out=tmp_path / name)
    artifact = Artifact.load(out)
    m = artifact.manifest
    layer, gap = FAMILIES[name]
    assert m["target_layer"] == layer
    assert m["g_starts_with_gap"] is gap
    assert m["check"]["relative_error"] <= 1e-4
    assert set(m["graphs"]["f"]) == {"onnx"}

    # on an input the exporter never saw: g takes a batch, one call equals N calls,
    # and the pooled tail equals g after the GAP
    x = np.random.default_rng(7).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feature = run_onnx(out / "f.onnx", x)
    assert feature.shape[1:] == tuple(m["feature"]["shape"])
    scores = run_onnx(out / "g.onnx", feature)
    assert scores.shape == (1, 1000)
    batch = masked_batch(feature[0], 0, 5)
    masked = run_onnx(out / "g.onnx", batch)
    one_by_one = np.concatenate([run_onnx(out / "g.onnx", b[None]) for b in batch])
    np.testing.assert_allclose(masked, one_by_one, rtol=1e-4, atol=1e-5)
    if gap:
        pooled = feature.reshape(1, feature.shape[1], -1).mean(axis=2)
        np.testing.assert_allclose(run_onnx(out / "g_pooled.onnx", pooled), scores,
                                   rtol=1e-4, atol=1e-5 * np.abs(scores).max())


def test_exported_pair_matches_torch_on_new_input(tmp_path):
    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None).eval()
    weights = tmp_path / "r18.pt"
    torch.save(model.state_dict(), weights)
    out = export_artifact("resnet18", weights=str(weights), fmt="both", out=tmp_path / "a")
    x = np.random.default_rng(11).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    scores = run_onnx(out / "g.onnx", run_onnx(out / "f.onnx", x))
    np.testing.assert_allclose(scores, reference, atol=1e-4 * np.abs(reference).max())

    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": "f32"}
    f = core.compile_model(str(out / "f.xml"), "CPU", cfg)
    g = core.compile_model(str(out / "g.xml"), "CPU", cfg)
    ov_scores = g(f(x)[0])[0]
    np.testing.assert_allclose(ov_scores, reference, atol=1e-4 * np.abs(reference).max())


def test_manifest_contents_and_checksums(resnet18_dir):
    m = json.loads((resnet18_dir / "manifest.json").read_text())
    assert m["format_version"] == 1
    assert m["source"]["model"] == "resnet18"
    assert m["source"]["weights"].endswith("resnet18.pt")
    inp = m["input"]
    assert inp["shape"] == [1, 3, 224, 224] and inp["layout"] == "NCHW" and inp["color"] == "RGB"
    assert inp["resize"] == "shorter_side_crop" and inp["resize_size"] == 256
    assert inp["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert m["feature"]["shape"] == [512, 7, 7]
    assert m["output"] == {"name": "scores", "num_classes": 1000, "logits": True}
    assert m["labels"][285] == "Egyptian cat"
    expected = {"f.onnx", "g.onnx", "g_pooled.onnx", "explain.onnx", "f.xml", "f.bin",
                "g.xml", "g.bin", "g_pooled.xml", "g_pooled.bin", "explain.xml", "explain.bin"}
    assert set(m["files"]) == expected
    for name, digest in m["files"].items():
        assert sha256_file(resnet18_dir / name) == digest
    assert not [p for p in resnet18_dir.parent.iterdir() if p.name.startswith(".")]


def test_ir_only_format_has_no_onnx(tmp_path):
    out = export_artifact("toy_models:tiny_gap", fmt="ir", out=tmp_path / "ir")
    names = {p.name for p in out.iterdir()}
    assert names == {"manifest.json", "f.xml", "f.bin", "g.xml", "g.bin", "g_pooled.xml",
                     "g_pooled.bin", "explain.xml", "explain.bin"}
    assert "openvino" in Artifact.load(out).manifest["check"]["per_backend"]


def test_pretrained_lite0_artifact(lite0_dir, photos):
    artifact = Artifact.load(lite0_dir)
    m = artifact.manifest
    assert m["target_layer"] == "_bn1" and m["g_starts_with_gap"]
    assert m["input"]["resize"] == "direct" and m["input"]["shape"] == [1, 3, 224, 224]
    assert m["feature"]["shape"] == [1280, 7, 7]
    # g reads the batch size from the feature map, not the image: a batch of 49 works
    x = artifact.preprocessing(photos["chelsea"])
    feature = run_onnx(lite0_dir / "f.onnx", x)
    masked = run_onnx(lite0_dir / "g.onnx", masked_batch(feature[0]))
    assert masked.shape == (49, 1000)
    scores = run_onnx(lite0_dir / "g.onnx", feature)[0]
    probs = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    assert m["labels"][int(scores.argmax())] == "Egyptian cat"
    assert probs.max() > 0.7


def test_reexport_replaces_an_artifact_and_keeps_other_files(tmp_path):
    out = tmp_path / "again"
    export_artifact("toy_models:tiny_gap", fmt="onnx", out=out)
    (out / "labels.txt").write_text("cat\ndog\n")
    (out / "my_results").mkdir()
    (out / "my_results" / "run1.npz").write_bytes(b"results")
    export_artifact("toy_models:tiny_gap", fmt="ir", out=out)
    assert not (out / "f.onnx").exists() and (out / "f.xml").exists()
    assert (out / "labels.txt").read_text() == "cat\ndog\n"
    assert (out / "my_results" / "run1.npz").read_bytes() == b"results"
    assert [p.name for p in tmp_path.iterdir()] == ["again"]
    Artifact.load(out)


def test_squeezenet_like_head_declares_its_classes_and_fuses(tmp_path, image):
    """A conv → ReLU → GAP → flatten head (SqueezeNet's): the exporter writes the class count
    into the graphs, and ONNX Runtime fuses f with the pooled tail (a symbolic count too)."""
    import onnx
    import openvino as ov

    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends.onnxruntime_backend import OnnxRuntimeBackend

    out = export_artifact("toy_models:conv_head", fmt="both", out=tmp_path / "head")
    m = Artifact.load(out).manifest
    assert m["target_layer"] == "classifier.1" and m["g_starts_with_gap"]
    shape = tuple(m["feature"]["shape"])
    for role, dims in (("f", ["batch", *shape]), ("g", ["batch", 6]), ("g_pooled", ["batch", 6])):
        declared = onnx.load(str(out / f"{role}.onnx")).graph.output[0].type.tensor_type.shape
        assert [d.dim_param or d.dim_value for d in declared.dim] == dims, role
    assert ov.Core().read_model(str(out / "g_pooled.xml")).output(0).get_partial_shape()[1] == 6

    symbolic = onnx.load(str(out / "g_pooled.onnx"))
    dim = symbolic.graph.output[0].type.tensor_type.shape.dim[1]
    dim.Clear()
    dim.dim_param = "classes"  # as torch.onnx writes it for this head
    onnx.save(symbolic, str(tmp_path / "g_pooled_symbolic.onnx"))
    x = ReciproCAM(out, backend="onnxruntime").preprocessing(image)
    scores = run_onnx(out / "g.onnx", run_onnx(out / "f.onnx", x))
    n = shape[1] * shape[2]
    for tail in (out / "g_pooled.onnx", tmp_path / "g_pooled_symbolic.onnx"):
        fused = OnnxRuntimeBackend().compile_pooled_explainer(out / "f.onnx", tail, shape)
        assert fused is not None, tail.name
        rows = fused(x)
        assert rows.shape == (1, n + 1, 6)
        np.testing.assert_allclose(rows[0, 0], scores[0], rtol=1e-5, atol=1e-6)
