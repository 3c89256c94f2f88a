"""The Gaussian-spread mask option, pinned against masks built by hand and a full torch pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reciprocam_ir import ReciproCAM
from reciprocam_ir.masking import (
    gaussian_kernel,
    masked_batch,
    pooled_masked,
    pooling_matrix,
    spatial_masks,
    weighted_masked_batch,
    weighted_pooled_masked,
)
from reciprocam_ir.saliency import normalise, softmax
from torch_reference import masked_scores

AUTHORS = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float64) / 16.0


def explicit_masks(h: int, w: int) -> np.ndarray:
    """The authors' 3×3 kernel placed on every position by loops, cut at the border."""
    masks = np.zeros((h * w, h, w))
    for n in range(h * w):
        i, j = divmod(n, w)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if 0 <= i + di < h and 0 <= j + dj < w:
                    masks[n, i + di, j + dj] = AUTHORS[di + 1, dj + 1]
    return masks


def torch_maps(model: torch.nn.Module, layer: str, x: np.ndarray, classes: list[int],
               scores: str = "logits") -> np.ndarray:
    """(K, N) maps of the whole torch model, ``layer``'s output replaced by F ⊙ M_n for the
    explicit masks."""
    out = masked_scores(model, layer, x, explicit_masks)
    if scores == "softmax":
        out = softmax(out)
    return normalise(out[:, classes])  # (K, N)


def test_default_kernel_is_the_authors():
    np.testing.assert_allclose(gaussian_kernel(), AUTHORS, atol=1e-12)
    wide = gaussian_kernel(1.0)
    assert wide.shape == (5, 5) and wide.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        gaussian_kernel(0.0)
    with pytest.raises(ValueError):
        spatial_masks(3, 3, "box")


def test_masks_onehot_and_gaussian_by_hand():
    np.testing.assert_array_equal(spatial_masks(3, 4).reshape(12, 12), np.eye(12))
    masks = spatial_masks(5, 6, "gaussian")
    np.testing.assert_allclose(masks, explicit_masks(5, 6), atol=1e-7)
    np.testing.assert_allclose(masks[0, :2, :2], [[4 / 16, 2 / 16], [2 / 16, 1 / 16]])


def test_weighted_helpers_reduce_to_onehot_and_pool_exactly():
    feature = np.random.default_rng(0).standard_normal((6, 4, 5)).astype(np.float32)
    onehot = spatial_masks(4, 5)
    np.testing.assert_array_equal(weighted_masked_batch(feature, onehot), masked_batch(feature))
    np.testing.assert_allclose(weighted_pooled_masked(feature, onehot), pooled_masked(feature),
                               atol=1e-7)
    gauss = spatial_masks(4, 5, "gaussian")
    gap = weighted_masked_batch(feature, gauss).mean(axis=(2, 3))
    np.testing.assert_allclose(weighted_pooled_masked(feature, gauss), gap, atol=1e-6)
    np.testing.assert_array_equal(weighted_masked_batch(feature, gauss, 3, 7),
                                  weighted_masked_batch(feature, gauss)[3:7])


@pytest.mark.parametrize("scores", ["logits", "softmax"])
def test_gaussian_maps_on_lite0_match_the_full_model_on_explicit_masks(lite0_dir, photos, scores):
    """Pooled-tail shortcut with Gaussian masks == the whole torch model on F ⊙ M_n."""
    from export.pretrained import efficientnet_lite0

    cam = ReciproCAM(lite0_dir, backend="openvino", precision="f32", scores=scores,
                     mask="gaussian")
    assert cam.uses_pooled_tail and cam.mask == "gaussian"
    exp = cam.explain(photos["chelsea"], top_k=2)
    reference = torch_maps(efficientnet_lite0(), "_bn1", cam.preprocessing(photos["chelsea"]),
                           list(exp.targets[0]), scores)
    np.testing.assert_allclose(exp.saliency[0].reshape(len(reference), -1), reference, atol=1e-4)
    onehot = ReciproCAM(lite0_dir, backend="openvino", precision="f32", scores=scores)
    assert np.abs(onehot.explain(photos["chelsea"], top_k=2).saliency - exp.saliency).max() > 0.05


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_gaussian_maps_on_the_full_g_path(flatten_dir, backend):
    from toy_models import tiny_flatten

    cam = ReciproCAM(flatten_dir, backend=backend, precision="f32", mask="gaussian",
                     memory_budget_mb=0.02)  # chunked as well (the 64² masks fit)
    assert not cam.uses_pooled_tail
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    exp = cam.explain(image, targets="all")
    layer = cam.artifact.manifest["target_layer"]
    reference = torch_maps(tiny_flatten(), layer, cam.preprocessing(image), [0, 1, 2, 3])
    np.testing.assert_allclose(exp.saliency[0].reshape(len(reference), -1), reference, atol=1e-4)


def test_narrow_gaussian_equals_onehot_and_bad_mask_is_refused(lite0_dir, photos):
    narrow = ReciproCAM(lite0_dir, backend="onnxruntime", mask="gaussian", mask_sigma=0.05)
    plain = ReciproCAM(lite0_dir, backend="onnxruntime")
    np.testing.assert_allclose(narrow.explain(photos["coffee"]).saliency,
                               plain.explain(photos["coffee"]).saliency, atol=1e-4)
    with pytest.raises(ValueError):
        ReciproCAM(lite0_dir, backend="onnxruntime", mask="box")


def test_pooling_matrix_stacks_the_mean_on_the_masked_pools():
    feature = np.random.default_rng(1).standard_normal((6, 4, 5)).astype(np.float32)
    rows = feature.reshape(6, 20).T
    onehot = pooling_matrix(20) @ rows
    np.testing.assert_allclose(onehot[0], feature.mean(axis=(1, 2)), atol=1e-6)
    np.testing.assert_allclose(onehot[1:], pooled_masked(feature), atol=1e-6)
    for kind in ("gaussian", "drop"):
        masks = spatial_masks(4, 5, kind)
        np.testing.assert_allclose((pooling_matrix(20, masks) @ rows)[1:],
                                   weighted_pooled_masked(feature, masks), atol=1e-6)
