"""Write ``f``/``g`` GraphModules as ONNX (dynamic batch) and OpenVINO IR (f32)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

OPSET = 17


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
               output_name: str) -> None:
    """Export with the batch axis dynamic on the input and output."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def onnx_to_ir(onnx_path: Path, xml_path: Path) -> None:
    """Convert an ONNX graph to IR keeping f32 weights (no fp16 compression)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
