"""Write ``f``/``g`` as ONNX (dynamic batch) and OpenVINO IR (f32).

Torch is imported only to write ONNX from a PyTorch module, so the graph-file
exporter can use :func:`onnx_to_ir` without it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reciprocam_ir.messages import first_line

from .errors import ExportError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPSET = 17
BATCH = "batch"


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
               output_name: str) -> None:
    """Export with the batch axis dynamic on the input and output."""
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: BATCH}, output_name: {0: BATCH}},
        )


def onnx_to_ir(onnx_path: Path, xml_path: Path, source: str) -> None:
    """Convert an ONNX graph to IR keeping f32 weights (no fp16 compression)."""
    import openvino as ov

    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    except Exception as exc:  # OpenVINO's frontends raise several kinds
        raise ExportError(f"{source}: OpenVINO cannot convert {onnx_path.name} "
                          f"({first_line(exc)}); try --format onnx") from None


def declare_output_shape(path: Path, dims: Sequence[int]) -> None:
    """Write an ONNX graph's output shape as (batch, *dims): the batch symbolic, the rest static.

    Exporters leave some sizes symbolic (a Flatten after a reshape: SqueezeNet's class
    count); whatever reads the declared shape (ONNX Runtime's fused explainer, IR
    conversion, the user's own tools) then knows less than the graph computes.
    """
    import onnx

    model = onnx.load(str(path))
    shape = model.graph.output[0].type.tensor_type.shape
    del shape.dim[:]
    shape.dim.add().dim_param = BATCH
    for d in dims:
        shape.dim.add().dim_value = int(d)
    onnx.save(model, str(path))
