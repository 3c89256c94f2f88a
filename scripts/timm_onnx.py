#!/usr/bin/env python
"""Write a vision transformer, seeded random weights, whole to ONNX or OpenVINO IR as a user
would (for benchmarks).

Usage: ``.venv/bin/python scripts/timm_onnx.py deit_tiny_patch16_224 /tmp/deit_tiny.onnx``
(dynamic batch, opset 17 unless ``--opset`` says another, ``torch.onnx.export`` with the
TorchScript exporter; below 17 it writes each LayerNorm out as ReduceMean … Add). An ``.xml``
output is that ONNX file converted by ``openvino.convert_model`` and ``save_model`` (weights
compressed to f16, OpenVINO's default), or with ``--from-torch`` the PyTorch model converted
directly. The model ``hf_vit_tiny`` is the Hugging Face-shaped ViT of ``tests/toy_models.py``
(separate query, key, value projections) at DeiT-Tiny's size: 224x224, 16x16 patches, width
192, 12 layers, 3 heads, MLP 768, 1000 classes (transformers is not a dependency).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(name: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The model, seeded, and its input shape (C, H, W)."""
    torch.manual_seed(0)
    if name == "hf_vit_tiny":
        sys.path.insert(0, str(ROOT / "tests"))
        from toy_models import HfViT

        model = HfViT(size=224, patch=16, width=192, depth=12, heads=3, classes=1000, mlp=4)
        return model.eval(), (3, 224, 224)
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    return model, tuple(model.pretrained_cfg["input_size"])


def write_onnx(model: torch.nn.Module, size: tuple[int, ...], out: str, opset: int = 17
               ) -> None:
    torch.onnx.export(model, (torch.zeros(1, *size),), out, dynamo=False,
                      opset_version=opset, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a timm model name, e.g. vit_small_patch16_224, "
                        "or hf_vit_tiny")
    parser.add_argument("out", help="the .onnx or .xml (OpenVINO IR) file to write")
    parser.add_argument("--from-torch", action="store_true",
                        help="an .xml converted from the PyTorch model, not from ONNX")
    parser.add_argument("--opset", type=int, default=17,
                        help="the ONNX opset to export at (default 17; timm's fused attention "
                        "needs 14 or more)")
    args = parser.parse_args()
    model, size = build(args.model)
    if not args.out.lower().endswith(".xml"):
        write_onnx(model, size, args.out, args.opset)
        return
    import openvino as ov

    if args.from_torch:
        with torch.no_grad():
            converted = ov.convert_model(model, example_input=torch.zeros(1, *size),
                                         input=[-1, *size])
    else:
        with tempfile.TemporaryDirectory() as folder:
            onnx_path = str(Path(folder) / "model.onnx")
            write_onnx(model, size, onnx_path, args.opset)
            ov.save_model(ov.convert_model(onnx_path), args.out)
        return
    ov.save_model(converted, args.out)


if __name__ == "__main__":
    main()
