"""ViT-ReciproCAM end to end: exported token artifacts explained on both backends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import toy_models
from conftest import read_manifest
from reciprocam_ir import ReciproCAM
from reciprocam_ir.cli import main as explain_main
from reciprocam_ir.masking import mask_rows, spatial_masks
from reciprocam_ir.paths import ExplainGraph
from reciprocam_ir.saliency import normalise
from torch_reference import masked_token_scores

BACKENDS = ("openvino", "onnxruntime")
LAST, FIRST = "encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_0"


@pytest.fixture(scope="module")
def artifacts(export_once) -> dict[str, object]:
    """The class-token shortcut (last block) and the masked sequences (first block)."""
    return {LAST: export_once("toy_models:tiny_vit_affine", explain_top_k=2),
            FIRST: export_once("toy_models:tiny_vit_affine", layer=FIRST, explain_top_k=2)}


def inputs(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)


def torch_maps(model: torch.nn.Module, block: str, x: np.ndarray, targets: np.ndarray,
               masks: np.ndarray) -> np.ndarray:
    """(B, K, h, w) maps of the whole torch model with the masked stream and LN1 output."""
    h, w = masks.shape[1:]
    return np.stack([normalise(masked_token_scores(model, block, x[i : i + 1], masks)
                               [:, targets[i]]).reshape(-1, h, w) for i in range(len(x))])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block, tail", [(LAST, "class token"), (FIRST, "sequences")])
@pytest.mark.parametrize("explain_graph", [True, False])
def test_maps_equal_the_whole_model_with_masked_tokens(artifacts, backend, block, tail,
                                                       explain_graph):
    cam = ReciproCAM(artifacts[block], backend=backend, precision="f32",
                     explain_graph=explain_graph)
    path = cam.path_for(None, 2)
    assert isinstance(path, ExplainGraph) == explain_graph
    assert cam.path.name == f"f, token tail ({tail})"
    x = inputs(3)
    exp = cam.explain_tensor(x, top_k=2)
    model = toy_models.tiny_vit_affine()
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(exp.scores, plain, atol=1e-4 * np.abs(plain).max())
    np.testing.assert_array_equal(exp.targets, np.argsort(-plain, axis=1)[:, :2])
    assert exp.saliency.shape == (3, 2, 4, 4)
    expected = torch_maps(model, block, x, exp.targets, spatial_masks(4, 4, "gaussian"))
    np.testing.assert_allclose(exp.saliency, expected, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_masks_and_classes_take_the_general_path(artifacts, backend):
    cam = ReciproCAM(artifacts[LAST], backend=backend, precision="f32", mask="onehot")
    assert cam.graph_path is None  # the explain graph holds the default (Gaussian) masks
    x = inputs(1)
    exp = cam.explain_tensor(x, targets=[3, 7])
    onehot = np.eye(16, dtype=np.float32).reshape(16, 4, 4)
    expected = torch_maps(toy_models.tiny_vit_affine(), LAST, x, exp.targets, onehot)
    np.testing.assert_allclose(exp.saliency, expected, atol=1e-4)
    default = ReciproCAM(artifacts[LAST], backend=backend, precision="f32")
    assert not np.allclose(default.explain_tensor(x, targets=[3, 7]).saliency, exp.saliency)


def test_the_manifest_describes_the_tokens(artifacts):
    last, first = (read_manifest(artifacts[b]) for b in (LAST, FIRST))
    assert last["feature"] == {"name": "feature", "kind": "tokens", "shape": [17, 16],
                               "grid": [4, 4], "prefix_tokens": 1}
    assert last["target_layer"] == LAST and first["target_layer"] == FIRST
    assert last["token_tail"] == {"kind": "class_token", "masks_name": "masks"}
    assert first["token_tail"] == {"kind": "sequences", "masks_name": "masks"}
    assert last["explain"]["mask"] == "gaussian" and last["explain"]["top_k"] == 2
    assert last["g_starts_with_gap"] is False and "g_pooled" not in last["graphs"]


def test_the_sequences_tail_keeps_to_the_memory_budget(artifacts):
    x = inputs(2)
    roomy = ReciproCAM(artifacts[FIRST], backend="onnxruntime", precision="f32")
    # one masked sequence of 17 x 16 tokens is estimated at 8.5 KiB: 3 rows a call
    tight = ReciproCAM(artifacts[FIRST], backend="onnxruntime", precision="f32",
                       memory_budget_mb=0.026)
    assert tight.rows_per_call() == 3 and tight.graph_path is None
    np.testing.assert_allclose(tight.explain_tensor(x).saliency,
                               roomy.explain_tensor(x).saliency, atol=1e-6)
    with pytest.raises(MemoryError, match="cannot hold one masked sequence of 17 tokens"):
        ReciproCAM(artifacts[FIRST], backend="onnxruntime", memory_budget_mb=0.005)


def test_cli_explains_a_vit_artifact(artifacts, tmp_path, image):
    import cv2

    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert explain_main(["explain", str(artifacts[LAST]), str(path), "--out", str(out),
                         "--save-npz", "--top-k", "2", "--backend", "onnxruntime"]) == 0
    saved = np.load(out / "cat.npz")
    assert saved["saliency"].shape == (2, 4, 4) and saved["targets"].shape == (2,)
    assert len(list(out.glob("cat_*.png"))) == 2


B32_INPUT = inputs(1).repeat(7, axis=2).repeat(7, axis=3)


@pytest.fixture(scope="module")
def vit_b_32(export_once) -> tuple[object, np.ndarray]:
    """The artifact, and the whole torch model's masked scores in float64 (49 Gaussian masks)."""
    folder = export_once("toy_models:vit_b_32_shallow")
    model = toy_models.vit_b_32_shallow().double()
    reference = masked_token_scores(model, "encoder.layers.encoder_layer_1", B32_INPUT,
                                    spatial_masks(7, 7, "gaussian"))
    return folder, reference


@pytest.mark.parametrize("backend", BACKENDS)
def test_vit_b_32_scores_and_maps_equal_torch(vit_b_32, backend):
    """ViT-B/32's layers (7x7 grid, two of them). Random weights leave the masked scores
    within 0.2 % of the logit scale, where float32 alone moves a normalised map by 2e-4
    (torch f32 against f64), so the masked scores are held to 1e-4 of the logits and the maps
    to 1e-3."""
    folder, reference = vit_b_32
    cam = ReciproCAM(folder, backend=backend, precision="f32")
    manifest = cam.artifact.manifest
    assert manifest["feature"]["grid"] == [7, 7] and manifest["feature"]["shape"] == [50, 768]
    assert manifest["target_layer"] == "encoder.layers.encoder_layer_1"
    assert manifest["token_tail"]["kind"] == "class_token"
    exp = cam.explain_tensor(B32_INPUT)
    tail = cam.backend.compile(cam.artifact.graph_path("g", cam.backend.graph_format[0]))
    masks = spatial_masks(7, 7, "gaussian")
    scores = tail(cam.features(B32_INPUT), mask_rows(49, masks)[1:])[0]
    np.testing.assert_allclose(scores, reference, atol=1e-4 * np.abs(reference).max())
    expected = normalise(reference[:, exp.targets[0]]).reshape(1, -1, 7, 7)
    np.testing.assert_allclose(exp.saliency, expected, atol=1e-3)
