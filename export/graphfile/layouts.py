"""Which axis of a 4-D tensor holds the channels, read from the graph around it.

Converters from channels-last frameworks (tf2onnx, Keras) run convolutions in NCHW between
Transposes and transpose back before the head (``ReduceMean`` over axes 1, 2): the last
4-D tensor is then N x h x w x C, and cut there its map would be h x C. A layout is a
permutation of ``"NCHW"`` naming what each axis holds; it is known from where a tensor comes
from (the image input, a Transpose, an NCHW operator such as Conv or MaxPool, any other
operator passing its input's layout on) or, failing that, from what reads it (a Transpose
or NCHW operator, a reduction over the spatial axes).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

NCHW, NHWC = "NCHW", "NHWC"

CHANNELS_FIRST = frozenset({
    # ONNX
    "Conv", "ConvInteger", "QLinearConv", "ConvTranspose", "MaxPool", "AveragePool",
    "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "BatchNormalization",
    "InstanceNormalization", "LRN", "MaxRoiPool", "DepthToSpace", "SpaceToDepth",
    # OpenVINO
    "Convolution", "GroupConvolution", "ConvolutionBackpropData",
    "GroupConvolutionBackpropData", "AvgPool", "BatchNormInference", "AdaptiveAvgPool",
    "AdaptiveMaxPool", "DeformableConvolution", "BinaryConvolution",
})
"""Operators whose 4-D data input and output are N x C x h x w by definition."""

RESHAPING = frozenset({
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Einsum", "Gather", "GatherND",
    "GatherElements", "ScatterND", "Tile", "Expand", "Range", "Shape", "ShapeOf", "Split",
    "VariadicSplit", "Loop", "If",
})
"""Operators after which the axes mean something new (their 4-D outputs start unknown)."""

REDUCTIONS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd",
                        "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare"})


@dataclass(frozen=True)
class Op:
    """One operator as the layout rules see it (tensors are any hashable keys)."""

    kind: str
    inputs: tuple[Hashable, ...]
    outputs: tuple[Hashable, ...]
    perm: tuple[int, ...] | None = None  # Transpose
    axes: tuple[int, ...] | None = None  # reductions, non-negative


def transposed(layout: str, perm: Sequence[int]) -> str:
    """The layout of ``Transpose(perm)`` of a tensor laid out as ``layout``."""
    return "".join(layout[p] for p in perm)


def _from_producer(op: Op, layouts: dict[Hashable, str | None]) -> str | None:
    if op.kind in CHANNELS_FIRST:
        return NCHW
    if op.kind in RESHAPING:
        return None
    known = {layouts[i] for i in op.inputs if layouts.get(i) is not None}
    if op.kind == "Transpose":
        source = layouts.get(op.inputs[0])
        return transposed(source, op.perm) if source and op.perm and len(op.perm) == 4 \
            else None
    return known.pop() if len(known) == 1 else None


def _from_reader(op: Op, tensor: Hashable) -> str | None:
    """What ``op`` reading ``tensor`` (4-D) says about its layout, if anything."""
    if op.kind in CHANNELS_FIRST and op.inputs[:1] == (tensor,):
        return NCHW
    if op.kind == "Transpose" and op.perm is not None and len(op.perm) == 4:
        # into NCHW (tf2onnx before a Conv) or out of it (before a channels-last head)
        if transposed(NHWC, op.perm) == NCHW:
            return NHWC
        if transposed(NCHW, op.perm) == NHWC:
            return NCHW
    if op.kind in REDUCTIONS and op.axes is not None and len(op.axes) == 2:
        return {(1, 2): NHWC, (2, 3): NCHW}.get(tuple(sorted(op.axes)))
    return None


def infer_layouts(ops: Sequence[Op], four_d: Iterable[Hashable],
                  sources: dict[Hashable, str]) -> dict[Hashable, str | None]:
    """The layout of every 4-D tensor (None where the graph does not say).

    ``ops`` in topological order; ``four_d`` the 4-D tensors; ``sources`` the known layouts
    (the image input). Known producers decide first; a tensor they leave open takes what
    its readers agree on, and that is passed on forward again.
    """
    four_d = set(four_d)
    readers: dict[Hashable, list[Op]] = {}
    for op in ops:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    layouts: dict[Hashable, str | None] = dict(sources)
    settled: dict[Hashable, str] = {}
    for _ in range(3):  # forward, fill from readers, forward again with what they said
        layouts = {**dict(sources), **settled}
        for op in ops:
            layout = _from_producer(op, layouts)
            for out in op.outputs:
                if out in four_d and out not in settled:
                    layouts[out] = layout
        changed = False
        for tensor in four_d:
            if layouts.get(tensor) is None and tensor not in settled:
                said = {_from_reader(r, tensor) for r in readers.get(tensor, ())} - {None}
                if len(said) == 1:
                    settled[tensor] = said.pop()
                    changed = True
        if not changed:
            break
    return {t: layouts.get(t) for t in four_d}


def layout_problem(layout: str | None) -> str | None:
    """Why a tensor of ``layout`` cannot be cut as N x C x h x w (None when it can)."""
    if layout is None or layout == NCHW:
        return None
    kind = " (channels last)" if layout == NHWC else ""
    return f"it is laid out {layout}{kind}, not NCHW: its map would mix channels and space"
