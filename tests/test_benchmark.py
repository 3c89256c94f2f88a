"""The benchmark script's smoke mode, and the fast explain path against the slow ones.

No timing asserts: timings on a shared CPU are noise; only completeness and sanity.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reciprocam_ir.paths import AffineRows

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    work = tmp_path_factory.mktemp("bench")
    out = work / "result.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--work-dir", str(work), "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_quick_run_prints_the_table_and_progress(quick_run):
    proc, _ = quick_run
    assert "| model | layer | N | backend |" in proc.stdout
    assert "| window ratio (its explain graph, general path) |" in proc.stdout
    assert "16 images" in proc.stdout
    assert "| model | graph static ÷ model static | graph static ÷ model dynamic |" in proc.stdout
    assert "[benchmark" in proc.stderr and "[benchmark" not in proc.stdout


def test_quick_run_numbers_are_positive_and_finite(quick_run):
    _, result = quick_run
    rows = result["rows"]
    assert {r["backend"] for r in rows} == {"openvino", "onnxruntime"}
    assert all(r["model"] == "resnet18" and r["layer"] == "layer4" for r in rows)
    for r in rows:
        for key in ("predict_ms", "explain_ms", "drop_ms", "window_ms", "window_general_ms",
                    "window_ratio", "window_general_ratio", "predict16_ms", "explain16_ms",
                    "rss_mb", "first_s", "cached_first_s"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["backend"], key, r[key])
        assert r["feature"] == [512, 7, 7]
        # the window through its own explain graph, and (softmax) through the fused rows
        assert r["window_path"] == "explain graph", r
        assert r["window_general_path"] == "f+pooled tail fused", r
        assert 50 < r["rss_mb"] < 4096
        if r["backend"] == "openvino":  # explain graph and model, static and dynamic batch
            assert len(r["static"]) == 6 and all(0 < v < 10 for v in r["static"].values()), r
        else:
            assert "static" not in r
    assert result["peers"] == []


def test_quick_run_fast_path_maps_equal_slow_path_maps(quick_run):
    _, result = quick_run
    for r in result["rows"]:
        assert r["pooled"]
        assert r["map_diff_pooled"] < 1e-4, r
        assert r["map_diff_full"] < 1e-4, r
        assert r["score_diff"] < 1e-3, r
        assert r["map_diff_graph"] < 1e-4, r
        assert r["path"] == "explain graph"
    # resnet18's head is one Linear: explicit classes take the affine rows
    assert all(r["general_path"].endswith("affine rows") for r in result["rows"])


def slow_path_matches(cam, backend, fmt: str) -> None:
    """``cam.explain`` against ``f`` then ``g`` on all N masked maps (Eq. 5), images batched."""
    from reciprocam_ir.masking import masked_batch
    from reciprocam_ir.saliency import normalise

    rng = np.random.default_rng(1)
    images = [(rng.random((200 + 10 * i, 240, 3)) * 255).astype(np.uint8) for i in range(3)]
    exp = cam.explain(images, top_k=3)
    g = backend.compile(cam.artifact.graph_path("g", fmt))
    features = cam.features(np.concatenate([cam.preprocessing(im) for im in images]))
    for i, feature in enumerate(features):
        scores = g(np.concatenate([feature[None], masked_batch(feature)]))
        np.testing.assert_allclose(exp.scores[i], scores[0], atol=1e-3, rtol=1e-4)
        maps = normalise(scores[1:, exp.targets[i]]).reshape(exp.saliency[i].shape)
        np.testing.assert_allclose(exp.saliency[i], maps, atol=1e-4)


@pytest.mark.parametrize("backend_name", ["openvino", "onnxruntime"])
def test_affine_rows_equal_separate_graphs(quick_run, backend_name):
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends import create_backend

    artifact = Path(quick_run[1]["rows"][0]["artifact"])
    backend = create_backend(backend_name, "CPU", "f32")
    cam = ReciproCAM(artifact, backend=backend, batch_size=2)
    assert isinstance(cam.path, AffineRows)
    slow_path_matches(cam, backend, backend.graph_format[0])
    image = (np.random.default_rng(2).random((64, 64, 3)) * 255).astype(np.uint8)
    soft = ReciproCAM(artifact, backend=backend, scores="softmax").explain(image)
    np.testing.assert_allclose(soft.scores, cam.explain(image).scores, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def mlp_head_artifact(export_once) -> Path:
    return export_once("toy_models:tiny_mlp_head", fmt="both")  # cut at "body", the default


@pytest.mark.parametrize("backend_name", ["openvino", "onnxruntime"])
def test_fused_graph_equals_separate_graphs(mlp_head_artifact, backend_name):
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends import create_backend

    backend = create_backend(backend_name, "CPU", "f32")
    cam = ReciproCAM(mlp_head_artifact, backend=backend, batch_size=2)
    assert cam.affine_head is None and cam.path.name == "f+pooled tail fused"
    slow_path_matches(cam, backend, backend.graph_format[0])


@pytest.mark.parametrize("backend_name", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("mask", ["gaussian", "drop"])
def test_fused_graph_with_weighted_masks_equals_the_tail_on_numpy_rows(mlp_head_artifact,
                                                                      backend_name, mask):
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends import create_backend

    backend = create_backend(backend_name, "CPU", "f32")
    cam = ReciproCAM(mlp_head_artifact, backend=backend, mask=mask)
    assert cam.graph_path is None and cam.path.name == "f+pooled tail fused"
    image = (np.random.default_rng(3).random((80, 90, 3)) * 255).astype(np.uint8)
    exp = cam.explain(image, targets="all")
    unmasked, masked = cam.masked_scores(cam.features(cam.preprocessing(image))[0])
    np.testing.assert_allclose(exp.scores[0], unmasked, atol=1e-5)
    np.testing.assert_allclose(exp.saliency[0].reshape(len(unmasked), -1), cam.maps(masked),
                               atol=1e-4)


def test_cuda_device_without_a_gpu_is_a_clear_error(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA provider is installed here: the benchmark would run")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "CUDA", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert "CUDAExecutionProvider" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_vit_rows_time_the_shortcut_and_the_masked_sequences(tmp_path):
    """A vision transformer gets its shortcut row and a masked-sequence row for contrast,
    and the shortcut's maps are checked against the sequences of the same model."""
    from conftest import subprocess_env

    out = tmp_path / "vit.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", "toy_models:tiny_vit", "--backend",
         "onnxruntime", "--repeats", "3", "--no-peers", "--no-layer3", "--work-dir",
         str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["tail"], r["path"]) for r in rows] == [
        ("class_token", "explain graph"), ("sequences", "explain graph")]
    assert rows[0]["general_path"] == "f, token tail (class token)"
    assert rows[1]["general_path"] == "f, token tail (sequences)"
    assert rows[0]["map_diff_full"] < 1e-4 and rows[0]["map_diff_graph"] < 1e-4
    assert "tiny_vit (sequences tail)" in proc.stdout


def test_an_onnx_vit_file_is_its_own_baseline(tmp_path):
    """An ONNX file as a model: cut from the file, the file the baseline, and a timm ViT
    file gets the class-token shortcut row and its masked-sequence row."""
    pytest.importorskip("timm")
    import torch

    import toy_models
    from conftest import subprocess_env
    from export.artifact.graph_files import tracing

    path = tmp_path / "timm_vit.onnx"
    with tracing():
        torch.onnx.export(toy_models.tiny_timm_vit(), (torch.zeros(1, 3, 32, 32),), str(path),
                          dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "b"}})
    out = tmp_path / "vit.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--models", str(path), "--backend", "onnxruntime",
         "--repeats", "3", "--no-peers", "--no-layer3", "--work-dir", str(tmp_path / "work"),
         "--json", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["tail"]) for r in rows] == [("timm_vit", "class_token"),
                                                       ("timm_vit", "sequences")]
    assert rows[0]["map_diff_full"] < 1e-4 and rows[0]["map_diff_graph"] < 1e-4
