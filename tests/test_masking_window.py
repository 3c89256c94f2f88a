"""The renormalised ``window`` mask, pinned against masks built by hand and a full torch pass
on every path: affine rows (logits), the fused and the unfused pooled tail, ``g`` on maps."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from reciprocam_ir import ReciproCAM, cli
from reciprocam_ir.masking import (
    DEFAULT_WINDOW_SIGMA,
    DEFAULT_WINDOW_STRENGTH,
    SOFTMAX_MASKS,
    pooling_matrix,
    spatial_masks,
    weighted_pooled_masked,
)
from reciprocam_ir.paths import AffineRows, AllRows
from reciprocam_ir.saliency import normalise, softmax
from torch_reference import explicit_window_masks, masked_scores

BACKENDS = ("openvino", "onnxruntime")


def test_window_masks_by_hand():
    assert (DEFAULT_WINDOW_SIGMA, DEFAULT_WINDOW_STRENGTH) == (0.85, 4.0)
    assert "window" in SOFTMAX_MASKS
    masks = spatial_masks(5, 6, "window")
    assert masks.dtype == np.float32
    np.testing.assert_allclose(masks, explicit_window_masks(5, 6), atol=1e-6)
    # a corner keeps as much as the centre: every mask sums to the strength
    np.testing.assert_allclose(masks.reshape(30, -1).sum(axis=1), 4.0, rtol=1e-6)
    assert masks[0, 4, 5] > 0  # not truncated: the far corner still has weight
    wide = spatial_masks(4, 7, "window", sigma=1.5, strength=2.0)
    np.testing.assert_allclose(wide, explicit_window_masks(4, 7, 1.5, 2.0), atol=1e-6)
    feature = np.random.default_rng(0).standard_normal((3, 4, 7)).astype(np.float32)
    gap = (feature[None] * wide[:, None]).mean(axis=(2, 3))
    np.testing.assert_allclose(weighted_pooled_masked(feature, wide), gap, atol=1e-6)
    np.testing.assert_allclose((pooling_matrix(28, wide) @ feature.reshape(3, 28).T)[1:], gap,
                               atol=1e-6)
    with pytest.raises(ValueError, match="mask_strength applies to the window mask"):
        spatial_masks(3, 3, "gaussian", strength=2.0)
    for bad in (0.0, -1.0, float("inf"), float("nan"), True):
        with pytest.raises(ValueError, match="mask_strength must be a number"):
            spatial_masks(3, 3, "window", strength=bad)


def reference_maps(model, layer: str, x: np.ndarray, classes, scores: str,
                   sigma: float = 0.85, strength: float = 4.0) -> np.ndarray:
    """(K, N): the whole torch model with ``layer``'s output F replaced by F ⊙ (s·w_n)."""
    out = masked_scores(model, layer, x,
                        partial(explicit_window_masks, sigma=sigma, strength=strength))
    if scores == "softmax":
        out = softmax(out)
    return normalise(out[:, list(classes)])


@pytest.fixture(scope="module")
def resnet18_window_scores(resnet18_dir, resnet18_weights, photos
                           ) -> tuple[np.ndarray, np.ndarray]:
    """resnet18's input for chelsea and its N masked scores from the whole torch model.

    (Not Lite0: its model applies ReLU6 again after the cut, which clips masked maps above
    the feature's range, and the exporter drops that repeated ReLU6 from ``g``.
    tests/test_evaluate.py pins Lite0's window maps against the evaluation's numpy map.)
    """
    import torch
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(resnet18_weights, weights_only=True))
    cam = ReciproCAM(resnet18_dir, backend="onnxruntime", precision="f32", explain_graph=False)
    x = cam.preprocessing(photos["chelsea"])
    return x, masked_scores(model.eval(), "layer4", x, explicit_window_masks)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scores, budget, path", [
    ("logits", 256.0, "affine rows"),           # the K classes' rows only
    ("softmax", 256.0, "f+pooled tail fused"),  # every class of the N + 1 pooled rows
    ("softmax", 0.0186, "f, pooled tail"),      # the masks fit, the fused matrix does not
])
def test_window_maps_on_resnet18_match_the_full_model(resnet18_dir, photos,
                                                      resnet18_window_scores, backend,
                                                      scores, budget, path):
    x, reference_scores = resnet18_window_scores
    cam = ReciproCAM(resnet18_dir, backend=backend, precision="f32", mask="window",
                     scores=None if scores == "softmax" else scores, memory_budget_mb=budget)
    assert cam.scores == scores and cam.path.name.endswith(path)
    assert isinstance(cam.path, AffineRows if scores == "logits" else AllRows)
    exp = cam.explain(photos["chelsea"], top_k=2)
    masked = softmax(reference_scores) if scores == "softmax" else reference_scores
    np.testing.assert_allclose(exp.saliency[0].reshape(2, -1),
                               normalise(masked[:, exp.targets[0]]), atol=1e-4)
    np.testing.assert_array_equal(exp.saliency, cam.explain_tensor(x, top_k=2).saliency)
    paper = ReciproCAM(resnet18_dir, backend=backend, precision="f32", scores=scores)
    assert np.abs(paper.explain(photos["chelsea"], top_k=2).saliency - exp.saliency).max() > 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_maps_on_the_pooled_mlp_head(export_once, backend):
    from toy_models import tiny_mlp_head

    folder = export_once("toy_models:tiny_mlp_head", fmt="both")
    # strength N (as if each window filled the map): the toy's masked scores vary enough to
    # compare normalised maps at 1e-4
    cam = ReciproCAM(folder, backend=backend, precision="f32", mask="window", mask_sigma=1.2,
                     mask_strength=64.0)
    assert cam.path.name == "f+pooled tail fused"
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    exp = cam.explain(image, targets="all")
    layer = cam.artifact.manifest["target_layer"]
    reference = reference_maps(tiny_mlp_head(), layer, cam.preprocessing(image), range(6),
                               "softmax", 1.2, 64.0)
    np.testing.assert_allclose(exp.saliency[0].reshape(6, -1), reference, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_maps_on_the_full_g_path(flatten_dir, backend):
    from toy_models import tiny_flatten

    cam = ReciproCAM(flatten_dir, backend=backend, precision="f32", mask="window",
                     memory_budget_mb=0.02)  # chunked as well (the 64² masks fit)
    assert not cam.uses_pooled_tail and cam.path.name == "f, g (N masked maps)"
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    exp = cam.explain(image, targets="all")
    layer = cam.artifact.manifest["target_layer"]
    reference = reference_maps(tiny_flatten(), layer, cam.preprocessing(image), range(4),
                               "softmax")
    np.testing.assert_allclose(exp.saliency[0].reshape(4, -1), reference, atol=1e-4)


def test_scores_follow_the_mask_unless_given(flatten_dir):
    assert ReciproCAM(flatten_dir, backend="onnxruntime").scores == "logits"
    window = ReciproCAM(flatten_dir, backend="onnxruntime", mask="window")
    assert (window.scores, window.mask_sigma, window.mask_strength) == ("softmax", 0.85, 4.0)
    assert ReciproCAM(flatten_dir, backend="onnxruntime", mask="window",
                      scores="logits").scores == "logits"
    drop = ReciproCAM(flatten_dir, backend="onnxruntime", mask="drop")
    assert (drop.scores, drop.mask_sigma, drop.mask_strength) == ("logits", 1.5, None)


@pytest.mark.parametrize("kwargs, match", [
    ({"mask_strength": 2.0}, "mask_strength sets the strength of mask window; name the mask"),
    ({"mask": "onehot", "mask_strength": 2.0}, "the onehot mask has none"),
    ({"mask": "drop", "mask_strength": 2.0}, "the drop mask has none"),
    ({"mask": "window", "mask_strength": 0.0}, "mask_strength must be a number"),
    ({"mask": "window", "mask_strength": float("nan")}, "mask_strength must be a number"),
    ({"mask": "window", "mask_strength": 1e9}, "mask_strength must be a number"),
    ({"mask": "window", "mask_sigma": 0.0}, "mask_sigma must be a number"),
])
def test_bad_window_options_are_refused_before_anything_loads(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReciproCAM(tmp_path / "not_an_artifact", **kwargs)


def test_cli_mask_window_writes_the_api_maps(capsys, lite0_dir, photos, tmp_path):
    import cv2

    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    code = cli.main(["explain", str(lite0_dir), str(path), "--out", str(out), "--save-npz",
                     "--mask", "window", "--mask-strength", "3", "--backend", "onnxruntime"])
    assert code == 0, capsys.readouterr().err
    api = ReciproCAM(lite0_dir, backend="onnxruntime", scores="softmax", mask="window",
                     mask_strength=3.0).explain(photos["coffee"])
    np.testing.assert_allclose(np.load(out / "coffee.npz")["saliency"], api.saliency[0], atol=1e-6)
    for args, message in (
            (["--mask-strength", "3"], "--mask-strength sets the strength of --mask window; "
                                       "name the mask it sets"),
            (["--mask", "onehot", "--mask-strength", "3"], "the onehot mask has none"),
            (["--mask", "gaussian", "--mask-strength", "3"], "the gaussian mask has none"),
            (["--mask", "window", "--mask-strength", "-1"], "mask_strength must be a number")):
        code = cli.main(["explain", str(lite0_dir), str(path), "--out", str(tmp_path / "x"),
                         *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()
