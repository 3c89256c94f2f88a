"""The window-removing ``drop`` masks, pinned against masks built by hand and a full torch pass."""

from __future__ import annotations

import numpy as np
import pytest

from reciprocam_ir import ReciproCAM, cli
from reciprocam_ir.masking import DEFAULT_DROP_SIGMA, REMOVING_MASKS, spatial_masks
from reciprocam_ir.saliency import normalise, softmax
from torch_reference import masked_scores


def explicit_drop_masks(h: int, w: int, sigma: float = DEFAULT_DROP_SIGMA) -> np.ndarray:
    """1 − exp(−d²/2σ²) within r = max(1, ⌊2σ⌋) cells (Chebyshev) of n, 1 elsewhere, by loops."""
    r = max(1, int(np.floor(2 * sigma)))
    masks = np.ones((h * w, h, w))
    for n in range(h * w):
        i, j = divmod(n, w)
        for a in range(h):
            for b in range(w):
                if abs(a - i) <= r and abs(b - j) <= r:
                    masks[n, a, b] = 1.0 - np.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma**2))
    return masks


def reference_maps(model, layer: str, x: np.ndarray, classes, scores: str) -> np.ndarray:
    """(K, N): the whole torch model on F ⊙ M_n; a low score marks a salient position."""
    out = masked_scores(model, layer, x, explicit_drop_masks)
    if scores == "softmax":
        out = softmax(out)
    return normalise(-out[:, list(classes)])


def test_drop_masks_by_hand():
    assert "drop" in REMOVING_MASKS
    masks = spatial_masks(5, 6, "drop")
    np.testing.assert_allclose(masks, explicit_drop_masks(5, 6), atol=1e-6)
    assert masks[7].min() == 0.0 and masks[7].reshape(-1)[7] == 0.0  # n itself fully removed
    narrow = spatial_masks(5, 6, "drop", sigma=0.85)
    np.testing.assert_allclose(narrow, explicit_drop_masks(5, 6, 0.85), atol=1e-6)
    assert narrow[0, 2:, :].min() == 1.0 and narrow[0, :, 2:].min() == 1.0  # radius 1


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("scores", ["logits", "softmax"])
def test_drop_maps_on_lite0_match_the_full_model_on_explicit_masks(lite0_dir, photos, backend,
                                                                  scores):
    """The affine fast path with drop masks == the whole torch model on F ⊙ (1 − window_n)."""
    from export.pretrained import efficientnet_lite0

    cam = ReciproCAM(lite0_dir, backend=backend, precision="f32", scores=scores, mask="drop")
    assert cam.affine_head is not None
    exp = cam.explain(photos["chelsea"], top_k=2)
    reference = reference_maps(efficientnet_lite0(), "_bn1",
                               cam.preprocessing(photos["chelsea"]), exp.targets[0], scores)
    np.testing.assert_allclose(exp.saliency[0].reshape(2, -1), reference, atol=1e-4)
    keep = ReciproCAM(lite0_dir, backend=backend, precision="f32", scores=scores)
    assert np.abs(keep.explain(photos["chelsea"], top_k=2).saliency - exp.saliency).max() > 0.05


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_drop_maps_on_the_full_g_path(flatten_dir, backend):
    from toy_models import tiny_flatten

    cam = ReciproCAM(flatten_dir, backend=backend, precision="f32", scores="softmax",
                     mask="drop", memory_budget_mb=0.02)  # chunked as well (the 64² masks fit)
    assert not cam.uses_pooled_tail
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    exp = cam.explain(image, targets="all")
    layer = cam.artifact.manifest["target_layer"]
    reference = reference_maps(tiny_flatten(), layer, cam.preprocessing(image), range(4),
                               "softmax")
    np.testing.assert_allclose(exp.saliency[0].reshape(4, -1), reference, atol=1e-4)


def test_cli_mask_drop_writes_the_api_maps(capsys, lite0_dir, photos, tmp_path):
    import cv2

    path = tmp_path / "coffee.png"
    cv2.imwrite(str(path), cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    code = cli.main(["explain", str(lite0_dir), str(path), "--out", str(out), "--save-npz",
                     "--mask", "drop", "--scores", "softmax", "--mask-sigma", "1.0",
                     "--backend", "onnxruntime"])
    assert code == 0, capsys.readouterr().err
    api = ReciproCAM(lite0_dir, backend="onnxruntime", scores="softmax", mask="drop",
                     mask_sigma=1.0).explain(photos["coffee"])
    np.testing.assert_allclose(np.load(out / "coffee.npz")["saliency"], api.saliency[0], atol=1e-6)
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", str(lite0_dir), str(path), "--mask", "box"])
    assert exc.value.code == 2 and "--mask" in capsys.readouterr().err
