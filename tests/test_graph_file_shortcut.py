"""The class-token shortcut for ViT graph files beyond timm's ONNX: Hugging Face-shaped ViTs
(separate query, key, value projections; eager and SDPA attention) exported to ONNX, and
OpenVINO IR made from ONNX or from the PyTorch model (f16-compressed weights too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

import toy_models
from export.artifact.graph_files import tracing
from export.graphfile.pipeline import export_graph_file
from reciprocam_ir import ReciproCAM
from reciprocam_ir.masking import spatial_masks
from reciprocam_ir.saliency import normalise
from torch_reference import masked_token_scores

OPTIONS = {"mean": (0.5,) * 3, "std": (0.25,) * 3}
HF_LAST = "layer.1"


def whole_onnx(model: torch.nn.Module, path: Path) -> Path:
    """The model exported whole, as a user would (batch dynamic, opset 17)."""
    with tracing():
        torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["pixel_values"],
                          output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "b"}, "logits": {0: "b"}})
    return path


def torch_ir(model: torch.nn.Module, path: Path) -> Path:
    """The PyTorch model converted to IR by OpenVINO (weights compressed to f16, its
    default), batch dynamic."""
    ov.save_model(ov.convert_model(model, example_input=torch.zeros(1, 3, 32, 32),
                                   input=[-1, 3, 32, 32]), str(path))
    return path


def onnx_ir(onnx_path: Path) -> Path:
    path = onnx_path.with_suffix(".xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    folder = tmp_path_factory.mktemp("shortcut_files")
    hf = whole_onnx(toy_models.hf_vit(), folder / "hf.onnx")
    files = {
        "hf_onnx": (hf, {}),
        "hf_sdpa_onnx": (whole_onnx(toy_models.hf_vit_sdpa(), folder / "hf_sdpa.onnx"), {}),
        "hf_ir": (onnx_ir(hf), {}),
        "hf_ir_sequences": (folder / "hf.xml", {"token_tail": "sequences"}),
        "hf_sdpa_torch_ir": (torch_ir(toy_models.hf_vit_sdpa(), folder / "hf_sdpa_pt.xml"), {}),
        "timm_ir": (onnx_ir(whole_onnx(toy_models.tiny_timm_vit(), folder / "timm.onnx")), {}),
        "odd_ir": (torch_ir(toy_models.hf_vit_odd_scale(), folder / "odd.xml"), {}),
    }
    made = {}
    for name, (path, extra) in files.items():
        logs: list[str] = []
        made[name] = (export_graph_file(str(path), out=folder / name, fmt="onnx" if
                                        path.suffix == ".onnx" else "ir", log=logs.append,
                                        **OPTIONS, **extra), logs)
    return made


def reference_maps(model: torch.nn.Module, block: str, x: np.ndarray,
                   targets: np.ndarray) -> np.ndarray:
    """The whole torch model with the tokens entering ``block`` masked (hooks)."""
    masks = spatial_masks(4, 4, "gaussian")
    return np.stack([normalise(masked_token_scores(model, block, x[i : i + 1], masks)
                               [:, targets[i]]).reshape(-1, 4, 4) for i in range(len(x))])


CASES = [("hf_onnx", "onnxruntime", toy_models.hf_vit, HF_LAST),
         ("hf_onnx", "openvino", toy_models.hf_vit, HF_LAST),
         ("hf_sdpa_onnx", "onnxruntime", toy_models.hf_vit_sdpa, HF_LAST),
         ("hf_ir", "openvino", toy_models.hf_vit, HF_LAST),
         ("hf_sdpa_torch_ir", "openvino", toy_models.hf_vit_sdpa, HF_LAST),
         ("timm_ir", "openvino", toy_models.tiny_timm_vit, "blocks.1")]


@pytest.mark.parametrize("name, backend, factory, block", CASES)
def test_the_shortcut_is_taken_with_exact_maps(artifacts, name, backend, factory, block):
    folder, logs = artifacts[name]
    cam = ReciproCAM(folder, backend=backend, precision="f32")
    assert cam.artifact.manifest["token_tail"]["kind"] == "class_token"
    assert "tail: the class-token shortcut (checked equal to the masked sequences)" in logs
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32), dtype=np.float32)
    exp = cam.explain_tensor(x, top_k=2)
    # f16 weights: the torch model is the reference only to their rounding
    atol = 2e-2 if name == "hf_sdpa_torch_ir" else 1e-4
    np.testing.assert_allclose(exp.saliency, reference_maps(factory(), block, x, exp.targets),
                               atol=atol)


def test_the_ir_shortcut_equals_the_ir_sequences(artifacts):
    ours, _ = artifacts["hf_ir"]
    theirs, logs = artifacts["hf_ir_sequences"]
    assert "tail: masked sequences" in logs
    assert ReciproCAM(theirs, backend="openvino").artifact.manifest["token_tail"]["kind"] \
        == "sequences"
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32), dtype=np.float32)
    maps = [ReciproCAM(a, backend="openvino", precision="f32").explain_tensor(
        x, targets=[1, 4]).saliency for a in (ours, theirs)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-4)


def test_an_ir_attention_the_shortcut_misreads_keeps_the_sequences(artifacts):
    folder, logs = artifacts["odd_ir"]
    cam = ReciproCAM(folder, backend="openvino", precision="f32")
    assert cam.artifact.manifest["token_tail"]["kind"] == "sequences"
    assert "tail: masked sequences" in logs
    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32), dtype=np.float32)
    exp = cam.explain_tensor(x, top_k=1)
    np.testing.assert_allclose(exp.saliency, reference_maps(
        toy_models.hf_vit_odd_scale(), HF_LAST, x, exp.targets), atol=2e-2)
