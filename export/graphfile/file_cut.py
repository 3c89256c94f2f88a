"""What the ONNX and IR cutters share: the image input check and named cut points.

A cut of a graph file is a 4-D float tensor (N, C, h, w), h, w > 1, through which every
path from the input to the output flows (the rule of the PyTorch path); the last is
the default. A tensor the graph shows to be laid out otherwise (channels last, see
:mod:`.layouts`) is not a cut.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError
from ..features import feature_description
from ..input_size import InputSize, checked_size, show

DEFAULT_SIZE = 224
GRAPH_SUFFIXES = (".onnx", ".xml")


def is_graph_file(spec: object) -> bool:
    """True for a model given as an ONNX (``.onnx``) or OpenVINO IR (``.xml``) file name."""
    return isinstance(spec, str) and spec.lower().endswith(GRAPH_SUFFIXES)


def output_formats(path: str | Path, fmt: str, formats: Sequence[str],
                   log: Callable[[str], None]) -> str:
    """The formats a graph file at ``path`` is written in for ``--format fmt``: an IR model
    only as IR (``both`` becomes ``ir``, ``onnx`` is refused)."""
    if fmt not in formats:
        raise ExportError(f"unknown format '{fmt}' (choose from {tuple(formats)})")
    source = str(path)
    if not is_graph_file(source):
        raise ExportError(f"model file '{path}': expected an .onnx or .xml (OpenVINO IR) file")
    if source.lower().endswith(".onnx"):
        return fmt
    if fmt == "onnx":
        raise ExportError(f"{source}: an OpenVINO IR model cannot be written as ONNX; "
                          "use --format ir")
    if fmt == "both":
        log("an IR model is written as IR only")
    return "ir"


@dataclass(frozen=True)
class TokenLayout:
    """A token cut of a graph file: the stream entering a transformer block, its patch grid,
    and the block's first LayerNorm output (tensor name or node key) that the masks weight."""

    grid: tuple[int, int]
    prefix: int
    ln1: str


@dataclass(frozen=True)
class CutPoint:
    """A valid cut: its name (tensor name for ONNX, node name for IR) and feature (C, h, w),
    or for the tokens entering a transformer block, (T, D) and their ``tokens`` layout."""

    name: str
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()
    tokens: TokenLayout | None = None

    @property
    def description(self) -> str:
        """The feature as ``--list-layers`` shows it."""
        return feature_description(self.shape, None if self.tokens is None
                                   else self.tokens.grid)


@dataclass(frozen=True)
class ImageInput:
    """The graph's single image input: its name, layout and spatial size."""

    name: str
    layout: str
    size: tuple[int, int]

    def shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        h, w = self.size
        return (batch, h, w, 3) if self.layout == "NHWC" else (batch, 3, h, w)


def image_input(source: str, names: Sequence[str], dims: Sequence[int | None] | None,
                is_float: bool, size: InputSize | None,
                first_conv: tuple[str, int] | None = None) -> ImageInput:
    """Check the graph has one float NCHW/NHWC 3-channel input; fix its size.

    ``dims`` holds None for dynamic axes. ``size`` is N or (height, width): a dynamic height
    or width takes it (default 224); a static one must equal it when it is given.
    ``first_conv`` is the layout and input channel count the graph's first convolution
    reads the input with: it fills a symbolic channel axis (Hugging Face optimum's ?x?x?x?).
    """
    if len(names) != 1:
        raise ExportError(f"{source}: graph has {len(names)} inputs ({', '.join(names)}); "
                          "only single-image classifiers (one input tensor) can be explained")
    name = names[0]
    shown = "?" if dims is None else "x".join("?" if d is None else str(d) for d in dims)
    dims = with_channels(dims, first_conv)
    if dims is None or len(dims) != 4 or not (dims[1] == 3 or dims[3] == 3):
        raise ExportError(f"{source}: input '{name}' has shape {shown}; expected one image "
                          "tensor N x 3 x H x W (NCHW) or N x H x W x 3 (NHWC)")
    if not is_float:
        raise ExportError(f"{source}: input '{name}' is not float32; expected a float image")
    layout = "NCHW" if dims[1] == 3 else "NHWC"
    spatial = dims[2:4] if layout == "NCHW" else dims[1:3]
    wanted = checked_size(size, 8)
    hw = []
    for axis, d in enumerate(spatial):
        if d is None:
            hw.append(wanted[axis] if wanted else DEFAULT_SIZE)
        elif wanted is not None and d != wanted[axis]:
            raise ExportError(f"{source}: input '{name}' is fixed at {shown}; "
                              f"--input-size {show(wanted)} does not match it")
        else:
            hw.append(d)
    return ImageInput(name, layout, (hw[0], hw[1]))


def with_channels(dims: Sequence[int | None] | None,
                  first_conv: tuple[str, int] | None) -> Sequence[int | None] | None:
    """``dims`` with a symbolic channel axis set from the first convolution's weights."""
    if dims is None or len(dims) != 4 or first_conv is None or 3 in (dims[1], dims[3]):
        return dims
    layout, channels = first_conv
    axis = 1 if layout == "NCHW" else 3
    if dims[axis] is not None:
        return dims
    return [*dims[:axis], channels, *dims[axis + 1:]]


def find_cut(source: str, cuts: Sequence[CutPoint], layer: str | None,
             known: set[str], misplaced: Sequence[tuple[CutPoint, str]] = ()) -> CutPoint:
    """The cut named ``layer`` (name or alias), or the last spatial cut when ``layer`` is None.

    ``misplaced`` holds the tensors that would be cuts but for their layout, with the reason.
    """
    if layer is None:
        if cuts:
            return cuts[-1]
        if misplaced:
            point, reason = misplaced[-1]
            raise ExportError(f"{source}: no valid cut; '{point.name}' would be one but "
                              f"{reason}")
        raise ExportError(f"{source}: no valid cut with a spatial feature map (h, w > 1)")
    for cut in cuts:
        if layer == cut.name or layer in cut.aliases:
            return cut
    valid = ", ".join(c.name for c in cuts[-3:]) or "none"
    for point, reason in misplaced:
        if layer == point.name or layer in point.aliases:
            raise ExportError(f"{source}: layer '{layer}' is not a valid cut: {reason}; "
                              f"valid cuts include: {valid}")
    if layer not in known:
        close = difflib.get_close_matches(layer, sorted(known), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ExportError(f"{source}: unknown layer '{layer}'{hint} (see --list-layers)")
    raise ExportError(f"{source}: layer '{layer}' is not a valid cut (not a 4-D float map with "
                      f"h, w > 1 that all later layers read through); valid cuts include: {valid}")


def softmax_over_classes(dims: Sequence[int | None] | None, axis: int) -> bool:
    """Whether a Softmax at ``axis`` of a ``dims`` tensor normalises each sample's class scores.

    True when every other non-batch axis has size 1: then the Softmax is the classifier's
    final one over all classes, and a reshape after it only adds or drops unit axes.
    """
    if dims is None or len(dims) < 2 or None in dims[1:]:
        return False
    axis = axis % len(dims)
    return axis > 0 and all(d == 1 for i, d in enumerate(dims[1:], 1) if i != axis)
