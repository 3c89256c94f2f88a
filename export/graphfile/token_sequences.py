"""A graph file's masked-sequence tail, stated once over the explain graph's op interface
(:class:`~export.artifact.graph_ops.GraphOps`).

``g`` (feature → scores) of a token cut becomes (feature, masks) → (B, M, classes): each of
the M mask rows, after ``prefix`` leading tokens of weight 1, weights a copy of the tokens
(the block's skip path) and of the block's first LayerNorm output, which reads the unmasked
copies. The ONNX (:mod:`.onnx_tokens`) and IR (:mod:`.ir_tokens`) halves call the three
steps below in order, rewiring their own graph in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..artifact.graph_ops import GraphOps, Value


@dataclass(frozen=True)
class MaskedCopies:
    """The copies of one batch of tokens (B, T, D) under M mask rows."""

    rows: Value
    """M, a 1-element int64 tensor."""
    weights: Value
    """(1, M, T, 1): each row's token weights."""
    sequence: Value
    """The int64 shape (-1, T, D) of B·M sequences."""
    per_image: Value
    """The int64 shape (-1, M, T, D)."""
    stream: Value
    """(B·M, T, D): the masked copies, image outer; what the block's skip path reads."""
    plain: Value
    """(B·M, T, D): the unmasked copies; what the block's first LayerNorm reads."""


def masked_copies(ops: GraphOps, feature: Value, masks: Value, shape: tuple[int, int],
                  prefix: int) -> MaskedCopies:
    """The copies of ``feature`` (B, T, D), ``shape`` (T, D), under ``masks`` (M, T - prefix)."""
    tokens, width = shape
    i64 = np.int64
    rows = ops.dim(masks, 0)
    ones = ops.broadcast_to(ops.const(np.ones((1, 1), np.float32)),
                            ops.concat([rows, ops.const(np.array([prefix], i64))], 0))
    weights = ops.reshape(ops.concat([ones, masks], 1), [1, -1, tokens, 1])
    sequence = ops.const(np.array([-1, tokens, width], i64))
    image = ops.reshape(feature, [-1, 1, tokens, width])
    stream = ops.reshape_to(ops.binary("mul", image, weights), sequence)
    plain = ops.reshape_to(ops.binary("mul", image, ops.reshape(ones, [1, -1, 1, 1])), sequence)
    per_image = ops.concat([ops.const(np.array([-1], i64)), rows,
                            ops.const(np.array([tokens, width], i64))], 0)
    return MaskedCopies(rows, weights, sequence, per_image, stream, plain)


def masked_layer_norm(ops: GraphOps, ln1: Value, copies: MaskedCopies) -> Value:
    """The LayerNorm output of the plain copies (B·M, T, D), each weighted by its row."""
    per_image = ops.reshape_to(ln1, copies.per_image)
    return ops.reshape_to(ops.binary("mul", per_image, copies.weights), copies.sequence)


def per_image_scores(ops: GraphOps, scores: Value, copies: MaskedCopies) -> Value:
    """(B·M, classes) scores as (B, M, classes)."""
    classes = ops.dim(scores, 1)
    shape = ops.concat([ops.const(np.array([-1], np.int64)), copies.rows, classes], 0)
    return ops.reshape_to(scores, shape)
