"""timm vision transformers on the PyTorch path: traced with their optional forward
arguments, timm's ``Block`` as a token cut, the class-token shortcut, timm's preprocessing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import toy_models
from conftest import read_manifest
from export.errors import ExportError
from export.torch.graph_cut import CutGraph
from export.torch.model_source import load_model
from export.torch.token_tail import class_token_tail, sequences_tail
from reciprocam_ir import ReciproCAM
from reciprocam_ir.masking import mask_rows, spatial_masks
from reciprocam_ir.saliency import normalise
from torch_reference import masked_token_scores

timm = pytest.importorskip("timm")

BACKENDS = ("openvino", "onnxruntime")
LAST, FIRST = "blocks.1", "blocks.0"
GAUSSIAN = mask_rows(16, spatial_masks(4, 4, "gaussian"))


@pytest.fixture(scope="module")
def vit():
    model = toy_models.tiny_timm_vit()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 32, 32),
                                                                  dtype=np.float32))
    return model, x, CutGraph(model, x)


@pytest.fixture(scope="module")
def artifacts(export_once) -> dict[str, object]:
    return {LAST: export_once("toy_models:tiny_timm_vit", explain_top_k=2),
            FIRST: export_once("toy_models:tiny_timm_vit", layer=FIRST, explain_top_k=2)}


def test_optional_forward_arguments_leave_one_input(vit):
    _, _, graph = vit
    assert [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"] == ["x"]


def test_timm_blocks_are_token_cuts_and_the_last_is_the_default(vit):
    _, _, graph = vit
    assert [c.name for c in graph.cuts if c.block is not None] == [FIRST, LAST]
    assert graph.default_cut().name == LAST
    assert graph.find(FIRST).description == "17 x 32 tokens (4x4 grid)"


def test_class_token_shortcut_is_the_masked_sequences_exactly(vit):
    model, x, graph = vit
    last = graph.blocks[LAST]
    shortcut, sequences = class_token_tail(graph, last), sequences_tail(graph, last)
    assert shortcut is not None
    with torch.no_grad():
        tokens = graph.split(graph.find(LAST)).f(x)
        rows = torch.from_numpy(GAUSSIAN)
        assert torch.allclose(shortcut(tokens, rows), sequences(tokens, rows), atol=2e-5)
        exact = copy.deepcopy(shortcut).double()(tokens.double(), rows.double()) - \
            copy.deepcopy(sequences).double()(tokens.double(), rows.double())
    assert exact.abs().max() < 1e-12
    reference = masked_token_scores(model, LAST, x.numpy(), GAUSSIAN[1:].reshape(16, 4, 4))
    with torch.no_grad():
        scores = sequences(tokens, rows)[0, 1:].numpy()
    np.testing.assert_allclose(scores, reference, atol=1e-5)


def test_attention_the_shortcut_does_not_model_takes_the_sequences():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3,
                              img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                              qk_norm=True).eval()
    graph = CutGraph(model, torch.zeros(1, 3, 32, 32))
    assert class_token_tail(graph, graph.blocks["blocks.0"]) is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("block, tail", [(LAST, "class token"), (FIRST, "sequences")])
def test_maps_equal_the_whole_timm_model_with_masked_tokens(artifacts, backend, block, tail):
    cam = ReciproCAM(artifacts[block], backend=backend, precision="f32")
    assert cam.path.name == f"f, token tail ({tail})"
    assert read_manifest(artifacts[block])["token_tail"]["kind"] == tail.replace(" ", "_")
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32), dtype=np.float32)
    exp = cam.explain_tensor(x, top_k=2)
    model = toy_models.tiny_timm_vit()
    with torch.no_grad():
        plain = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(exp.scores, plain, atol=1e-4 * np.abs(plain).max())
    masks = spatial_masks(4, 4, "gaussian")
    expected = np.stack([normalise(masked_token_scores(model, block, x[i : i + 1], masks)
                                   [:, exp.targets[i]]).reshape(-1, 4, 4) for i in range(2)])
    np.testing.assert_allclose(exp.saliency, expected, atol=1e-4)


def test_preprocessing_is_timms_pretrained_cfg(artifacts):
    recipe = read_manifest(artifacts[LAST])["input"]
    assert recipe["mean"] == [0.485, 0.456, 0.406] and recipe["std"] == [0.229, 0.224, 0.225]
    assert recipe["interpolation"] == "bicubic" and recipe["shape"] == [1, 3, 32, 32]
    assert recipe["resize"] == "shorter_side_crop" and recipe["resize_size"] == 35  # 32 / 0.9


def test_a_pretrained_cfg_gives_size_mean_and_crop():
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=2,
                              depth=1)
    recipe = load_model(model).preprocessing
    assert recipe.size == (224, 224) and recipe.resize_size == 248  # floor(224 / 0.9)
    assert recipe.mean == (0.5, 0.5, 0.5) and recipe.interpolation == "bicubic"
    assert recipe.resampler == "pil"
    assert load_model(model, size=64).preprocessing.resize_size == 71


def test_a_module_inside_a_timm_block_is_named_as_no_cut(vit):
    _, _, graph = vit
    with pytest.raises(ExportError, match="is not a valid cut") as error:
        graph.find("blocks.1.attn")
    assert "blocks.1" in str(error.value)
