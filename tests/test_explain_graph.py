"""The explain graph: one model file that gives scores, top-K targets and maps in one inference."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import toy_models
from conftest import read_manifest
from reciprocam_ir import ReciproCAM
from reciprocam_ir.paths import ExplainGraph
from reciprocam_ir.saliency import normalise, softmax
from torch_reference import explicit_window_masks, masked_scores

BACKENDS = ("openvino", "onnxruntime")
TAILS = {"affine GAP head": "tiny_gap", "pooled MLP head": "tiny_mlp_head",
         "no global pooling": "tiny_flatten"}


@pytest.fixture(scope="module")
def artifacts(export_once) -> dict[str, object]:
    return {factory: export_once(f"toy_models:{factory}", fmt="both", explain_top_k=3)
            for factory in TAILS.values()}


def inputs(cam: ReciproCAM, batch: int) -> np.ndarray:
    rng = np.random.default_rng(batch)
    return np.concatenate([cam.preprocessing(rng.integers(0, 256, (40 + 8 * i, 48, 3),
                                                          dtype=np.uint8))
                           for i in range(batch)])


def one_hot(h: int, w: int) -> np.ndarray:
    return np.eye(h * w, dtype=np.float32).reshape(h * w, h, w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("batch, top_k", [(1, 1), (3, 3)])
def test_maps_equal_the_runtime_paths_and_torch(artifacts, tail, backend, batch, top_k):
    folder = artifacts[TAILS[tail]]
    cam = ReciproCAM(folder, backend=backend, precision="f32", batch_size=batch)
    assert isinstance(cam.path_for(None, top_k), ExplainGraph)
    x = inputs(cam, batch)
    exp = cam.explain_tensor(x, top_k=top_k)
    general = ReciproCAM(folder, backend=backend, precision="f32", explain_graph=False)
    expected = general.explain_tensor(x, top_k=top_k)
    np.testing.assert_array_equal(exp.targets, expected.targets)
    np.testing.assert_allclose(exp.saliency, expected.saliency, atol=1e-4)

    model = getattr(toy_models, TAILS[tail])()
    layer = cam.artifact.manifest["target_layer"]
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(exp.scores, plain, atol=1e-4 * np.abs(plain).max())
    np.testing.assert_array_equal(exp.targets, np.argsort(-plain, axis=1)[:, :top_k])
    for i in range(batch):
        scores = masked_scores(model, layer, x[i : i + 1], one_hot)
        reference = normalise(scores[:, exp.targets[i]]).reshape(exp.saliency[i].shape)
        np.testing.assert_allclose(exp.saliency[i], reference, atol=1e-4)


def test_the_artifact_describes_its_explain_graph(artifacts):
    manifest = read_manifest(artifacts["tiny_gap"])
    assert manifest["graphs"]["explain"] == {"onnx": "explain.onnx", "ir": "explain.xml"}
    assert manifest["explain"] == {"top_k": 3, "mask": "onehot", "mask_sigma": None,
                                   "mask_strength": None, "scores": "logits"}
    assert set(manifest["check"]["explain_max_abs_map_error"]) == set(BACKENDS)
    assert {"explain.onnx", "explain.xml", "explain.bin"} <= set(manifest["files"])


PLAIN_RUNTIMES = """
import sys, json
import numpy as np
sys.modules["reciprocam_ir"] = None  # any import of the project fails
folder = sys.argv[1]
x = np.load(folder + "/x.npy")
import onnxruntime as ort
session = ort.InferenceSession(folder + "/explain.onnx", providers=["CPUExecutionProvider"])
assert [i.name for i in session.get_inputs()] == ["input"]
onnx_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
import openvino as ov
compiled = ov.Core().compile_model(folder + "/explain.xml", "CPU",
                                   {"INFERENCE_PRECISION_HINT": "f32"})
result = compiled({"input": x})
ov_out = {name: result[compiled.output(name)] for name in ("scores", "targets", "saliency")}
np.savez(folder + "/outputs.npz", **{f"onnx_{k}": v for k, v in onnx_out.items()},
         **{f"ov_{k}": v for k, v in ov_out.items()})
"""


def test_plain_onnx_runtime_and_openvino_run_it_without_this_project(artifacts, tmp_path):
    folder = tmp_path / "artifact"
    shutil.copytree(artifacts["tiny_flatten"], folder)
    cam = ReciproCAM(folder, backend="onnxruntime", explain_graph=False)
    x = inputs(cam, 3)
    np.save(folder / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", PLAIN_RUNTIMES, str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = np.load(folder / "outputs.npz")
    expected = cam.explain_tensor(x, top_k=3)
    for prefix in ("onnx", "ov"):
        assert out[f"{prefix}_targets"].dtype == np.int64
        np.testing.assert_array_equal(out[f"{prefix}_targets"], expected.targets)
        np.testing.assert_allclose(out[f"{prefix}_scores"], expected.scores, atol=1e-4)
        assert out[f"{prefix}_saliency"].shape == (3, 3, 8, 8)
        np.testing.assert_allclose(out[f"{prefix}_saliency"], expected.saliency, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_requests_it_does_not_compute_take_the_general_path(artifacts, backend):
    folder = artifacts["tiny_gap"]
    cam = ReciproCAM(folder, backend=backend, precision="f32")
    assert cam.path_for(None, 3) is cam.graph_path
    for targets, top_k in (([1, 2], 1), (4, 1), ("all", 1), (None, 4)):
        assert cam.path_for(targets, top_k) is cam.path and cam.path is not cam.graph_path
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    explicit = cam.explain(image, targets=[1, 2])
    top = cam.explain(image, top_k=5)
    assert explicit.saliency.shape[1] == 2 and top.saliency.shape[1] == 5
    for options in ({"mask": "gaussian"}, {"scores": "softmax"}, {"mask": "drop"},
                    {"mask": "window"}):
        assert ReciproCAM(folder, backend=backend, **options).graph_path is None


def test_a_class_whose_scores_never_change_gets_an_all_zero_map(export_once):
    folder = export_once("toy_models:blind_class", fmt="both")
    for backend in BACKENDS:
        cam = ReciproCAM(folder, backend=backend, precision="f32")
        exp = cam.explain(np.full((32, 32, 3), 128, np.uint8))
        assert exp.targets[0, 0] == 0 and isinstance(cam.path_for(None, 1), ExplainGraph)
        np.testing.assert_array_equal(exp.saliency[0, 0], 0.0)


def test_nan_scores_are_refused_through_the_explain_graph(export_once):
    """ONNX Runtime keeps the toy's NaN (OpenVINO simplifies 0·log(·) away, on every path)."""
    folder = export_once("toy_models:bright_nan", fmt="onnx")
    cam = ReciproCAM(folder, backend="onnxruntime")
    assert isinstance(cam.path_for(None, 1), ExplainGraph)
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        cam.explain(np.full((32, 32, 3), 255, np.uint8))
    assert np.isfinite(cam.explain(np.zeros((32, 32, 3), np.uint8)).saliency).all()


def test_an_artifact_without_an_explain_graph_still_works(artifacts, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(artifacts["tiny_gap"], folder)
    manifest = read_manifest(folder)
    for name in manifest["graphs"].pop("explain").values():
        (folder / name).unlink()
        manifest["files"].pop(name)
    (folder / "explain.bin").unlink()
    manifest["files"].pop("explain.bin")
    manifest.pop("explain")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    image = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    for backend in BACKENDS:
        cam = ReciproCAM(folder, backend=backend, precision="f32")
        assert cam.graph_path is None
        new = ReciproCAM(artifacts["tiny_gap"], backend=backend, precision="f32")
        np.testing.assert_allclose(cam.explain(image).saliency, new.explain(image).saliency,
                                   atol=1e-5)


def test_explain_top_k_beyond_the_classes_is_refused(capsys, tmp_path):
    from conftest import export_refused

    err = export_refused(capsys, tmp_path, "toy_models:tiny_gap", "--explain-top-k", "6")
    assert "--explain-top-k 6 must be in 1..5" in err


def test_graph_file_exports_hold_the_same_graph(tmp_path, photos):
    """Cut without torch from ONNX, from IR and from an INT8 (QDQ) ONNX: same explain graph."""
    from export.graphfile.pipeline import export_graph_file
    from graph_models import quantize, tiny_classifier, to_ir

    onnx_path = tiny_classifier(tmp_path / "tiny.onnx")
    images = list(photos.values())
    float_cam = ReciproCAM(export_graph_file(onnx_path, fmt="onnx", out=tmp_path / "f32"),
                           backend="onnxruntime", explain_graph=False)
    int8 = quantize(onnx_path, tmp_path / "int8.onnx",
                    [float_cam.preprocessing(image) for image in images])
    for source in (onnx_path, to_ir(onnx_path), int8):
        out = export_graph_file(source, out=tmp_path / f"{source.name}-artifact",
                                explain_top_k=2)
        assert read_manifest(out)["explain"]["top_k"] == 2
        for backend in BACKENDS if source.suffix == ".onnx" else ("openvino",):
            cam = ReciproCAM(out, backend=backend, precision="f32")
            general = ReciproCAM(out, backend=backend, precision="f32", explain_graph=False)
            assert isinstance(cam.path_for(None, 2), ExplainGraph)
            ours, theirs = cam.explain(images, top_k=2), general.explain(images, top_k=2)
            np.testing.assert_array_equal(ours.targets, theirs.targets)
            np.testing.assert_allclose(ours.saliency, theirs.saliency, atol=1e-4)


@pytest.mark.parametrize("explain_graph", [True, False])
def test_explain_tensor_equals_explain_on_the_same_input(artifacts, photos, explain_graph):
    cam = ReciproCAM(artifacts["tiny_mlp_head"], backend="onnxruntime", precision="f32",
                     explain_graph=explain_graph)
    images = [photos["chelsea"], photos["coffee"]]
    x = np.concatenate([cam.preprocessing(image) for image in images])
    for targets, top_k in ((None, 2), ([4, 1], 1)):
        a, b = cam.explain(images, targets, top_k), cam.explain_tensor(x, targets, top_k)
        np.testing.assert_array_equal(a.targets, b.targets)
        np.testing.assert_array_equal(a.saliency, b.saliency)
        np.testing.assert_array_equal(a.scores, b.scores)
    single = cam.explain_tensor(x[0])
    assert single.saliency.shape == (1, 1, 8, 8) and single.names == ["input0"]
    with pytest.raises(ValueError, match="holds no images"):
        single.overlay(0)
    with pytest.raises(ValueError, match=r"inputs must be shaped \(B, 3, 32, 32\)"):
        cam.explain_tensor(np.zeros((1, 32, 32, 3), np.float32))


# ------------------------------------------------------------- the window's explain graph

WINDOW = {"mask": "window", "mask_sigma": 1.2, "mask_strength": 64.0}
"""The toys' masked probabilities barely vary at strength 4; at N (64) they vary enough to
compare normalised maps at 1e-4 (real models: ~1e-6 at the defaults, the export check)."""


@pytest.fixture(scope="module")
def window_artifacts(export_once) -> dict[str, object]:
    return {factory: export_once(f"toy_models:{factory}", fmt="both", explain_top_k=3,
                                 explain_mask="window", explain_mask_sigma=1.2,
                                 explain_mask_strength=64.0)
            for factory in TAILS.values()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tail", TAILS)
def test_window_maps_equal_the_runtime_paths_and_torch(window_artifacts, tail, backend):
    folder = window_artifacts[TAILS[tail]]
    assert read_manifest(folder)["explain"] == {"top_k": 3, "mask": "window", "mask_sigma": 1.2,
                                                "mask_strength": 64.0, "scores": "softmax"}
    cam = ReciproCAM(folder, backend=backend, precision="f32", **WINDOW)
    assert isinstance(cam.path_for(None, 3), ExplainGraph)
    x = inputs(cam, 3)
    exp = cam.explain_tensor(x, top_k=3)
    general = ReciproCAM(folder, backend=backend, precision="f32", explain_graph=False,
                         **WINDOW)
    assert not isinstance(general.path, ExplainGraph)
    expected = general.explain_tensor(x, top_k=3)
    np.testing.assert_array_equal(exp.targets, expected.targets)
    np.testing.assert_allclose(exp.scores, expected.scores, atol=1e-5)
    np.testing.assert_allclose(exp.saliency, expected.saliency, atol=1e-4)

    model = getattr(toy_models, TAILS[tail])()
    layer = cam.artifact.manifest["target_layer"]
    for i in range(3):
        scores = softmax(masked_scores(model, layer, x[i : i + 1], lambda h, w: (
            explicit_window_masks(h, w, 1.2, 64.0))))
        reference = normalise(scores[:, exp.targets[i]]).reshape(exp.saliency[i].shape)
        np.testing.assert_allclose(exp.saliency[i], reference, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_window_graph_serves_only_its_own_map(window_artifacts, backend):
    folder = window_artifacts["tiny_gap"]
    assert isinstance(ReciproCAM(folder, backend=backend, **WINDOW).graph_path, ExplainGraph)
    default = ReciproCAM(folder, backend=backend)  # the artifact's own map (issue 23, item 8)
    assert isinstance(default.graph_path, ExplainGraph)
    assert (default.mask, default.mask_sigma, default.mask_strength, default.scores) == (
        "window", 1.2, 64.0, "softmax")
    for options in ({"mask": "onehot"}, {**WINDOW, "mask_sigma": 0.85},
                    {**WINDOW, "mask_strength": 4.0}, {**WINDOW, "scores": "logits"},
                    {"mask": "drop", "mask_sigma": 1.2}, {"scores": "logits"}):
        assert ReciproCAM(folder, backend=backend, **options).graph_path is None, options


def test_a_manifest_without_mask_strength_is_still_served(artifacts, tmp_path):
    """Artifacts exported before the window recorded no ``explain.mask_strength``."""
    folder = tmp_path / "older"
    shutil.copytree(artifacts["tiny_gap"], folder)
    manifest = read_manifest(folder)
    del manifest["explain"]["mask_strength"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert isinstance(ReciproCAM(folder, backend="onnxruntime").graph_path, ExplainGraph)
    manifest["explain"]["mask_strength"] = -1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="'explain.mask_strength' must be null or > 0"):
        ReciproCAM(folder, backend="onnxruntime")


def test_graph_file_export_builds_the_window_graph_from_the_command_line(tmp_path, photos):
    from export import cli
    from graph_models import tiny_classifier

    onnx_path = tiny_classifier(tmp_path / "tiny.onnx")
    out = tmp_path / "window"
    assert cli.main([str(onnx_path), "--out", str(out), "--format", "onnx", "-q",
                     "--explain-mask", "window", "--explain-mask-sigma", "1.2",
                     "--explain-mask-strength", "64", "--explain-top-k", "2"]) == 0
    assert read_manifest(out)["explain"] == {"top_k": 2, "mask": "window", "mask_sigma": 1.2,
                                             "mask_strength": 64.0, "scores": "softmax"}
    images = list(photos.values())
    cam = ReciproCAM(out, backend="onnxruntime", precision="f32", **WINDOW)
    general = ReciproCAM(out, backend="onnxruntime", precision="f32", explain_graph=False,
                         **WINDOW)
    assert isinstance(cam.path_for(None, 2), ExplainGraph)
    ours, theirs = cam.explain(images, top_k=2), general.explain(images, top_k=2)
    np.testing.assert_array_equal(ours.targets, theirs.targets)
    np.testing.assert_allclose(ours.saliency, theirs.saliency, atol=1e-4)


def test_the_torch_export_command_takes_the_window_options(tmp_path):
    from export import cli

    out = tmp_path / "gap"
    assert cli.main(["toy_models:tiny_gap", "--out", str(out), "--format", "onnx", "-q",
                     "--explain-mask", "window"]) == 0
    assert read_manifest(out)["explain"] == {"top_k": 1, "mask": "window", "mask_sigma": 0.85,
                                             "mask_strength": 4.0, "scores": "softmax"}
    assert isinstance(ReciproCAM(out, backend="onnxruntime", mask="window").graph_path,
                      ExplainGraph)


@pytest.mark.parametrize("args, message", [
    (("--explain-mask-sigma", "1"), "--explain-mask-sigma sets the window of --explain-mask "
                                    "gaussian, drop or window; name the mask it sets"),
    (("--explain-mask", "onehot", "--explain-mask-sigma", "1"), "the onehot mask has none"),
    (("--explain-mask-strength", "2"), "--explain-mask-strength sets the strength of "
                                       "--explain-mask window; name the mask it sets"),
    (("--explain-mask", "window", "--explain-mask-strength", "0"),
     "--explain-mask-strength must be a number in (0, 1e+06], got 0.0"),
    (("--explain-mask", "window", "--explain-mask-sigma", "100"),
     "--explain-mask-sigma must be a number of feature cells in (0, 64], got 100.0"),
])
def test_bad_explain_mask_options_are_refused(capsys, tmp_path, args, message):
    from conftest import export_refused

    assert message in export_refused(capsys, tmp_path, "toy_models:tiny_gap", *args)
