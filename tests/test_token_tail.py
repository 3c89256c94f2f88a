"""ViT-ReciproCAM tails in torch: token cuts, the class-token shortcut, the masked sequences."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

import toy_models
from conftest import export_refused
from export.errors import ExportError
from export.torch.graph_cut import CutGraph
from export.torch.token_tail import class_token_tail, hooked_scores, sequences_tail, token_weights
from reciprocam_ir.masking import mask_rows, spatial_masks
from torch_reference import masked_token_scores

GAUSSIAN = mask_rows(16, spatial_masks(4, 4, "gaussian"))
"""The all-ones row, then the authors' 3x3 Gaussian at each of the 4x4 positions."""


@pytest.fixture(scope="module")
def vit():
    model = toy_models.tiny_vit_affine()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 32, 32),
                                                                  dtype=np.float32))
    return model, x, CutGraph(model, x)


def tokens_at(graph: CutGraph, block: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return graph.split(graph.find(block)).f(x)


def test_token_cuts_are_the_blocks_with_their_grid(vit):
    _, _, graph = vit
    names = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert [c.name for c in graph.cuts] == names
    assert graph.default_cut().name == names[-1]
    for cut in graph.cuts:
        assert cut.shape == (17, 16) and cut.block.grid == (4, 4) and cut.block.prefix == 1
        assert cut.description == "17 x 16 tokens (4x4 grid)"


@pytest.mark.parametrize("block", ["encoder.layers.encoder_layer_0",
                                   "encoder.layers.encoder_layer_1"])
def test_masked_sequences_equal_the_model_with_hooks(vit, block):
    model, x, graph = vit
    tail = sequences_tail(graph, graph.blocks[block])
    with torch.no_grad():
        scores = tail(tokens_at(graph, block, x), torch.from_numpy(GAUSSIAN))[0].numpy()
        plain = model(x)[0].numpy()
    np.testing.assert_allclose(scores[0], plain, atol=1e-5)
    reference = masked_token_scores(model, block, x.numpy(), GAUSSIAN[1:].reshape(16, 4, 4))
    np.testing.assert_allclose(scores[1:], reference, atol=1e-5)


def test_class_token_shortcut_equals_the_sequences_exactly(vit):
    model, x, graph = vit
    last = graph.blocks["encoder.layers.encoder_layer_1"]
    shortcut, sequences = class_token_tail(graph, last), sequences_tail(graph, last)
    tokens = tokens_at(graph, last.name, x)
    rows = torch.from_numpy(np.concatenate([GAUSSIAN, mask_rows(16)[1:]]))  # Gaussian, one-hot
    with torch.no_grad():
        assert torch.allclose(shortcut(tokens, rows), sequences(tokens, rows), atol=2e-5)
        exact = copy.deepcopy(shortcut).double()(tokens.double(), rows.double()) - \
            copy.deepcopy(sequences).double()(tokens.double(), rows.double())
    assert exact.abs().max() < 1e-12  # the same function, not an approximation


def test_exporter_reference_is_the_definition(vit):
    model, x, graph = vit
    block = graph.blocks["encoder.layers.encoder_layer_1"]
    rows = GAUSSIAN[1:4]
    ours = hooked_scores(model, block, x, token_weights(torch.from_numpy(rows), 1)).numpy()
    theirs = masked_token_scores(model, block.name, x.numpy(), rows.reshape(3, 4, 4))
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_no_shortcut_before_the_last_block(vit):
    _, _, graph = vit
    assert class_token_tail(graph, graph.blocks["encoder.layers.encoder_layer_0"]) is None


@pytest.mark.parametrize("factory, reason", [
    ("mean_pooled_vit", "the head pools over the tokens"),
    ("two_token_vit", "its 18 tokens are 4x4 patches and 2 other tokens; only a single class "
                      "token first is supported"),
    ("unfold_vit", "its 25 tokens are not 1 class token + a square grid of patches"),
])
def test_unsupported_token_layouts_are_refused(capsys, tmp_path, factory, reason):
    line = export_refused(capsys, tmp_path, f"toy_models:{factory}")
    assert "cannot explain the transformer block" in line and reason in line


def test_naming_a_refused_block_gives_the_reason(capsys, tmp_path):
    line = export_refused(capsys, tmp_path, "toy_models:mean_pooled_vit", "--layer",
                          "vit.encoder.layers.encoder_layer_0")
    assert "'vit.encoder.layers.encoder_layer_0': the head pools over the tokens" in line


def test_a_layer_inside_a_block_is_not_a_cut(vit):
    _, _, graph = vit
    with pytest.raises(ExportError, match="not a transformer block"):
        graph.find("encoder.layers.encoder_layer_1.ln_1")


def test_swin_keeps_its_channel_last_map_and_has_no_token_cut():
    model = torchvision.models.swin_t(weights=None).eval()
    graph = CutGraph(model, torch.zeros(1, 3, 224, 224))
    assert not graph.blocks
    cut = graph.default_cut()
    assert cut.block is None and cut.shape == (768, 7, 7)
