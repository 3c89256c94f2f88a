#!/usr/bin/env python
"""Write a timm model, seeded random weights, whole to ONNX as a user would (for benchmarks).

Usage: ``.venv/bin/python scripts/timm_onnx.py deit_tiny_patch16_224 /tmp/deit_tiny.onnx``
(dynamic batch, opset 17, ``torch.onnx.export`` with the TorchScript exporter).
"""

from __future__ import annotations

import argparse

import timm
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a timm model name, e.g. vit_small_patch16_224")
    parser.add_argument("out", help="the .onnx file to write")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"]
    torch.onnx.export(model, (torch.zeros(1, *size),), args.out, dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


if __name__ == "__main__":
    main()
