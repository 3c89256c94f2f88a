"""The class-token shortcut of a ViT graph file's last block, stated once over the explain
graph's op interface (:class:`~export.artifact.graph_ops.GraphOps`) for the ONNX
(:mod:`.onnx_token_shortcut`) and IR (:mod:`.ir_token_shortcut`) recognisers.

Where the block after the cut is LayerNorm → attention (q, k, v projections of the LayerNorm
output, a softmax over q·kᵀ/√d, an output projection and a per-channel affine after it:
bias, LayerScale) → residual ``Add``, only the class token's row of the block is computed
for each mask row: its query is the same in every masked copy, the keys and values of copy
n are m_j·K'_j (+ b_k, which softmax drops) and m_j·V'_j + b_v with K', V' from the unmasked
LayerNorm output, so the attention output is (softmax(m ⊙ q0·K'/√d) ⊙ m)·V' + b_v. The rest
of the graph then runs on B·M sequences of one token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact.graph_ops import GraphOps, Value


@dataclass(frozen=True)
class BlockAttention:
    """What the shortcut needs of the last block's attention, x @ W layout."""

    w_q: np.ndarray
    """(D, D), as ``w_k`` and ``w_v``."""
    w_k: np.ndarray
    w_v: np.ndarray
    b_q: np.ndarray | None
    """(D,), as ``b_v``; the key's bias is not needed."""
    b_v: np.ndarray | None
    w_out: np.ndarray
    out_scale: np.ndarray | None
    """(D,): the output projection's result times this (a LayerScale), plus ``out_shift``
    (its bias, scaled)."""
    out_shift: np.ndarray | None
    residual: Any
    """The residual Add's output (the stream after attention), as the graph names it."""


def split_fused(w_qkv: np.ndarray, b_qkv: np.ndarray | None
                ) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """A fused (D, 3D) q | k | v projection and its bias, split into three."""
    biases = np.split(b_qkv, 3) if b_qkv is not None else [None] * 3
    return np.split(w_qkv, 3, axis=1), list(biases)


def channel_vector(value: np.ndarray, width: int) -> np.ndarray | None:
    """A constant that acts per channel on (…, D) tensors as a (D,) vector, else None."""
    if value.size not in (1, width) or any(d != 1 for d in value.shape[:-1]):
        return None
    return np.broadcast_to(value.reshape(-1), (width,)).astype(np.float64)


def compose_affine(steps: list[tuple[str, np.ndarray]], width: int
                   ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``steps`` (``mul``/``add`` by (D,) vectors, in graph order) as one scale and shift."""
    scale, shift = np.ones(width), np.zeros(width)
    for op, vector in steps:
        if op == "mul":
            scale, shift = scale * vector, shift * vector
        else:
            shift = shift + vector
    return (None if np.all(scale == 1) else scale.astype(np.float32),
            None if not shift.any() else shift.astype(np.float32))


def class_token_rows(ops: GraphOps, feature: Value, ln1: Value, masks: Value,
                     attention: BlockAttention, shape: tuple[int, int], prefix: int,
                     heads: int) -> tuple[Value, Value]:
    """(B·M, 1, D): the class token plus its attention output in each masked copy; and M."""
    tokens, width = shape
    size = width // heads
    rows = ops.dim(masks, 0)
    ones = ops.broadcast_to(ops.const(np.ones((1, 1), np.float32)),
                            ops.concat([rows, ops.const(np.array([prefix], np.int64))], 0))
    weights = ops.reshape(ops.concat([ones, masks], 1), [1, 1, -1, tokens])  # (1, 1, M, T)

    def const(x: np.ndarray) -> Value:
        return ops.const(np.asarray(x, np.float32))

    q0 = ops.binary("matmul", ops.slice(ln1, 0, 1, 1), const(attention.w_q))
    if attention.b_q is not None:
        q0 = ops.binary("add", q0, const(attention.b_q))
    q0 = ops.transpose(ops.reshape(q0, [-1, 1, heads, size]), [0, 2, 1, 3])      # (B, H, 1, d)
    k = ops.transpose(ops.reshape(ops.binary("matmul", ln1, const(attention.w_k)),
                                  [-1, tokens, heads, size]), [0, 2, 3, 1])       # (B, H, d, T)
    v = ops.transpose(ops.reshape(ops.binary("matmul", ln1, const(attention.w_v)),
                                  [-1, tokens, heads, size]), [0, 2, 1, 3])       # (B, H, T, d)
    scaled = ops.binary("mul", q0, ops.const(np.float32(size ** -0.5)))
    logits = ops.binary("matmul", scaled, k)                                      # (B, H, 1, T)
    attended = ops.binary("mul", ops.softmax(ops.binary("mul", logits, weights)), weights)
    per_image = ops.concat([ops.const(np.array([-1], np.int64)), rows,
                            ops.const(np.array([width], np.int64))], 0)
    out = ops.reshape_to(ops.transpose(ops.binary("matmul", attended, v), [0, 2, 1, 3]),
                         per_image)                                               # (B, M, D)
    if attention.b_v is not None:
        out = ops.binary("add", out, const(attention.b_v))
    out = ops.binary("matmul", out, const(attention.w_out))
    if attention.out_scale is not None:
        out = ops.binary("mul", out, const(attention.out_scale))
    if attention.out_shift is not None:
        out = ops.binary("add", out, const(attention.out_shift))
    summed = ops.binary("add", ops.slice(feature, 0, 1, 1), out)                   # (B, M, D)
    return ops.reshape(summed, [-1, 1, width]), rows


def close_enough(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """The shortcut's scores against the masked sequences': 1e-4 of their scale (f32)."""
    scale = max(1.0, float(np.abs(theirs).max()))
    return ours.shape == theirs.shape and float(np.abs(ours - theirs).max()) <= 1e-4 * scale


def probe_inputs(shape: tuple[int, int], prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens (2, T, D) and mask rows (3, N) to check a shortcut with."""
    rng = np.random.default_rng(0)
    tokens, width = shape
    return (rng.standard_normal((2, tokens, width)).astype(np.float32),
            rng.uniform(size=(3, tokens - prefix)).astype(np.float32))
