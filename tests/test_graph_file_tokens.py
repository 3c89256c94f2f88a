"""Deployed ViT graphs (ONNX, OpenVINO IR) cut without torch: token cuts, their tails (the
class-token shortcut from either)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

import toy_models
from conftest import export_refused
from export.artifact.graph_files import tracing
from export.graphfile.pipeline import export_graph_file, open_graph
from reciprocam_ir import ReciproCAM
from reciprocam_ir.masking import spatial_masks
from reciprocam_ir.saliency import normalise
from torch_reference import masked_token_scores

TOY = ("--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25")
LAST = "encoder.layers.encoder_layer_1"
STREAM = "/encoder/layers/encoder_layer_0/Add_1_output_0"
"""The ONNX tensor entering the last block (the output of the first)."""


def whole_onnx(model: torch.nn.Module, path: Path) -> Path:
    """The model exported whole, as a user would (batch dynamic)."""
    with tracing():
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "b"}, "logits": {0: "b"}})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("vit_files")
    onnx_path = whole_onnx(toy_models.tiny_vit_affine(), folder / "vit.onnx")
    ir_path = folder / "vit.xml"
    ov.save_model(ov.convert_model(str(onnx_path)), str(ir_path), compress_to_fp16=False)
    pooled = whole_onnx(toy_models.mean_pooled_vit(), folder / "pooled.onnx")
    return {"onnx": onnx_path, "ir": ir_path, "pooled": pooled}


@pytest.fixture(scope="module")
def artifacts(files, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("vit_file_artifacts")
    options = {"mean": (0.5,) * 3, "std": (0.25,) * 3}
    return {kind: export_graph_file(str(files[kind]), out=out / kind, **options)
            for kind in ("onnx", "ir")}


def test_token_cuts_of_a_deployed_vit(files):
    for kind in ("onnx", "ir"):
        cuts = [c for c in open_graph(files[kind]).cuts if c.tokens is not None]
        assert len(cuts) == 2, kind
        assert all(c.shape == (17, 16) and c.tokens.grid == (4, 4) and c.tokens.prefix == 1
                   for c in cuts)
        assert cuts[-1].description == "17 x 16 tokens (4x4 grid)"
    assert open_graph(files["onnx"]).find(None).name == STREAM


@pytest.mark.parametrize("kind, backend", [("onnx", "onnxruntime"), ("onnx", "openvino"),
                                           ("ir", "openvino")])
def test_deployed_vit_maps_equal_the_whole_model_with_masked_tokens(artifacts, kind, backend):
    cam = ReciproCAM(artifacts[kind], backend=backend, precision="f32")
    manifest = cam.artifact.manifest
    assert manifest["feature"]["kind"] == "tokens" and manifest["feature"]["grid"] == [4, 4]
    assert manifest["token_tail"]["kind"] == "class_token"
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32), dtype=np.float32)
    exp = cam.explain_tensor(x, top_k=2)
    model = toy_models.tiny_vit_affine()
    for i in range(2):
        scores = masked_token_scores(model, LAST, x[i : i + 1], spatial_masks(4, 4, "gaussian"))
        expected = normalise(scores[:, exp.targets[i]]).reshape(2, 4, 4)
        np.testing.assert_allclose(exp.saliency[i], expected, atol=1e-4)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_deployed_sequences_equal_the_exported_shortcut(artifacts, export_once, backend):
    shortcut = export_once("toy_models:tiny_vit_affine", explain_top_k=2)
    x = np.random.default_rng(4).standard_normal((3, 3, 32, 32), dtype=np.float32)
    ours = ReciproCAM(artifacts["onnx"], backend=backend, precision="f32").explain_tensor(
        x, targets=[0, 5, 9])
    theirs = ReciproCAM(shortcut, backend=backend, precision="f32").explain_tensor(
        x, targets=[0, 5, 9])
    np.testing.assert_allclose(ours.saliency, theirs.saliency, atol=1e-4)


def test_a_deployed_vit_that_pools_its_tokens_is_refused(capsys, tmp_path, files):
    line = export_refused(capsys, tmp_path, str(files["pooled"]), *TOY)
    assert "the head reads the patch tokens, not the class token alone" in line
