"""The class-token shortcut for ViT graph files: a timm ViT exported whole to ONNX (and the
IR written from it) explained through the shortcut, equal to the masked sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import toy_models
from export.artifact.graph_files import tracing
from export.graphfile.pipeline import export_graph_file
from reciprocam_ir import ReciproCAM
from reciprocam_ir.masking import spatial_masks
from reciprocam_ir.saliency import normalise
from torch_reference import masked_token_scores

pytest.importorskip("timm")

LAST = "blocks.1"
OPTIONS = {"mean": (0.5,) * 3, "std": (0.25,) * 3}


def whole_onnx(model: torch.nn.Module, path: Path) -> Path:
    """The model exported whole, as a user would (batch dynamic)."""
    with tracing():
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}})
    return path


def odd_scale_vit() -> torch.nn.Module:
    """tiny_timm_vit whose last attention scales q·k by 0.3, not 1/√d: the graph has the
    shortcut's ops, but not its function."""
    model = toy_models.tiny_timm_vit()
    attention = model.blocks[1].attn
    attention.fused_attn, attention.scale = False, 0.3
    return model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("timm_files")
    made = {}
    for name, factory in (("timm", toy_models.tiny_timm_vit), ("odd", odd_scale_vit)):
        path = whole_onnx(factory(), folder / f"{name}.onnx")
        made[name] = export_graph_file(str(path), out=folder / f"{name}_artifact", **OPTIONS)
    return made


def reference_maps(model: torch.nn.Module, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    masks = spatial_masks(4, 4, "gaussian")
    return np.stack([normalise(masked_token_scores(model, LAST, x[i : i + 1], masks)
                               [:, targets[i]]).reshape(-1, 4, 4) for i in range(len(x))])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_timm_onnx_vit_takes_the_shortcut_with_exact_maps(artifacts, backend):
    cam = ReciproCAM(artifacts["timm"], backend=backend, precision="f32")
    assert cam.artifact.manifest["token_tail"]["kind"] == "class_token"
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32), dtype=np.float32)
    exp = cam.explain_tensor(x, top_k=2)
    expected = reference_maps(toy_models.tiny_timm_vit(), x, exp.targets)
    np.testing.assert_allclose(exp.saliency, expected, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_graph_file_shortcut_equals_the_torch_sequences(artifacts, export_once, backend):
    sequences = export_once("toy_models:tiny_timm_vit", token_tail_kind="sequences")
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32), dtype=np.float32)
    ours = ReciproCAM(artifacts["timm"], backend=backend, precision="f32").explain_tensor(
        x, targets=[1, 4])
    theirs = ReciproCAM(sequences, backend=backend, precision="f32").explain_tensor(
        x, targets=[1, 4])
    np.testing.assert_allclose(ours.saliency, theirs.saliency, atol=1e-4)


def test_an_attention_the_shortcut_misreads_keeps_the_sequences(artifacts):
    cam = ReciproCAM(artifacts["odd"], backend="onnxruntime", precision="f32")
    assert cam.artifact.manifest["token_tail"]["kind"] == "sequences"
    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32), dtype=np.float32)
    exp = cam.explain_tensor(x, top_k=1)
    np.testing.assert_allclose(exp.saliency, reference_maps(odd_scale_vit(), x, exp.targets),
                               atol=1e-4)
