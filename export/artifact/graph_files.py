"""Write ``f``/``g`` as ONNX (dynamic batch) and OpenVINO IR (f32).

Torch is imported only to write ONNX from a PyTorch module, so the graph-file
exporter can use :func:`onnx_to_ir` without it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reciprocam_ir.messages import first_line

from ..errors import ExportError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPSET = 17
BATCH = "batch"


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """No gradients, no warnings, and nn.MultiheadAttention on its plain path: its fused
    inference kernel (taken under no_grad) has no ONNX form."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str,
               output_name: str) -> None:
    """Export with the batch axis dynamic on the input and output."""
    import torch

    with tracing():
        torch.onnx.export(
            module, (example,), str(path), dynamo=False, opset_version=OPSET,
            input_names=[input_name], output_names=[output_name],
            dynamic_axes={input_name: {0: BATCH}, output_name: {0: BATCH}},
        )


def write_token_tail_onnx(module: nn.Module, tokens: torch.Tensor, masks: torch.Tensor,
                          path: Path) -> None:
    """A token tail (tokens, masks) → (B, M, classes), batch and mask rows dynamic."""
    import torch

    from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME, OUTPUT_NAME

    with tracing():
        torch.onnx.export(
            module, (tokens, masks), str(path), dynamo=False, opset_version=OPSET,
            input_names=[FEATURE_NAME, MASKS_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={FEATURE_NAME: {0: BATCH}, MASKS_NAME: {0: MASKS_NAME},
                          OUTPUT_NAME: {0: BATCH, 1: MASKS_NAME}},
        )


def onnx_to_ir(onnx_path: Path, xml_path: Path, source: str) -> None:
    """Convert an ONNX graph to IR keeping f32 weights (no fp16 compression)."""
    import openvino as ov

    try:
        ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    except Exception as exc:  # OpenVINO's frontends raise several kinds
        raise ExportError(f"{source}: OpenVINO cannot convert {onnx_path.name} "
                          f"({first_line(exc)}); try --format onnx") from None


def declared_outputs(feature_shape: Sequence[int], num_classes: int, tokens: bool
                     ) -> dict[str, tuple[int | str, ...]]:
    """Each role's output shape after the batch axis, as :func:`declare_output_shape` writes
    it: f the feature, g the classes (per mask row for a token tail), g_pooled the classes."""
    from reciprocam_ir.artifact import MASKS_NAME

    return {"f": tuple(feature_shape),
            "g": (MASKS_NAME, num_classes) if tokens else (num_classes,),
            "g_pooled": (num_classes,)}


def write_ir(onnx_files: dict[str, Path], folder: Path, source: str,
             log: Callable[[str], None]) -> dict[str, Path]:
    """``role.xml`` in ``folder`` for each ONNX graph of ``onnx_files`` (role → path)."""
    ir_files = {}
    for role, path in onnx_files.items():
        log(f"writing {role}.xml")
        ir_files[role] = folder / f"{role}.xml"
        onnx_to_ir(path, ir_files[role], source)
    return ir_files


def declare_output_shape(path: Path, dims: Sequence[int | str]) -> None:
    """Write an ONNX graph's output shape as (batch, *dims): the batch symbolic, the rest
    static (a name for a symbolic axis, such as a token tail's mask rows).

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
        if isinstance(d, str):
            shape.dim.add().dim_param = d
        else:
            shape.dim.add().dim_value = int(d)
    onnx.save(model, str(path))
