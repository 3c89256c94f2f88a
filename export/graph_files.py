"""Write ``f``/``g`` as ONNX (dynamic batch) and OpenVINO IR (f32).

Torch is imported only to write ONNX from a PyTorch module, so the graph-file
exporter can use :func:`onnx_to_ir` without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from reciprocam_ir.messages import first_line

from .errors import ExportError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPSET = 17


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
               output_name: str) -> None:
    """Export with the batch axis dynamic on the input and output."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def onnx_to_ir(onnx_path: Path, xml_path: Path, source: str) -> None:
    """Convert an ONNX graph to IR keeping f32 weights (no fp16 compression)."""
    import openvino as ov

    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    except Exception as exc:  # OpenVINO's frontends raise several kinds
        raise ExportError(f"{source}: OpenVINO cannot convert {onnx_path.name} "
                          f"({first_line(exc)}); try --format onnx") from None
