"""ViT-ReciproCAM tails: the scores of N masked copies of the token stream entering a block.

Mask n weights the patch tokens by its spatial mask (the class token keeps weight 1) and
multiplies both the stream entering the block (its skip path) and the output of the
block's first LayerNorm, which reads the unmasked stream (masking after the LayerNorm,
not before it). Both tails are ``g`` of a token artifact, with two inputs:
``feature`` (B, T, D), the unmasked tokens, and ``masks`` (M, N), one row of patch-token
weights per masked copy; the output is (B, M, classes) (an all-ones row gives the model's
own scores).

- :func:`sequences_tail`: the M masked sequences through the rest of the model (any block);
- :func:`class_token_tail`: for the last block of a model whose head reads the class token,
  only the class token's row of the block is needed, and it is linear in the masks: the
  class token's query is the same for every copy, keys and values of copy n are
  m_j·K'_j + b_k and m_j·V'_j + b_v with K', V' computed once, so the attention logits
  are m_j·(q0·K'_j) (plus a constant that softmax drops) and the output is
  (a ⊙ m)·V' + b_v. The rest of the block and the head then run on M vectors.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME

from .graph_cut import CutGraph, TokenBlock, ancestors, copy_nodes

CLASS_TOKEN, SEQUENCES = "class_token", "sequences"


# ----------------------------------------------------------------- traced functions ---

def token_weights(masks: torch.Tensor, prefix: int) -> torch.Tensor:
    """(M, T): weight 1 for the ``prefix`` leading tokens, then each mask row."""
    ones = torch.ones_like(masks[:, :1]).expand(-1, prefix)
    return torch.cat([ones, masks], dim=1)


def masked_copies(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B·M, T, D): image b's tokens times weight row m, images outer."""
    return (tokens[:, None] * weights[None, :, :, None]).flatten(0, 1)


def plain_copies(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B·M, T, D): image b's tokens, unmasked, once per weight row (what LN1 reads)."""
    return tokens[:, None].expand(-1, weights.shape[0], -1, -1).flatten(0, 1)


def masked_rows(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(B·M, T, D) → each copy times its weight row (the LayerNorm output, masked)."""
    per_image = x.reshape(-1, weights.shape[0], x.shape[1], x.shape[2])
    return (per_image * weights[None, :, :, None]).flatten(0, 1)


def per_image(scores: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B·M, classes) → (B, M, classes)."""
    return scores.reshape(-1, masks.shape[0], scores.shape[-1])


def class_token_attention(u: torch.Tensor, weights: torch.Tensor, w_in: torch.Tensor,
                          b_in: torch.Tensor | None, w_out: torch.Tensor,
                          b_out: torch.Tensor | None, heads: int) -> torch.Tensor:
    """(B, M, D): the class token's attention output (after the output projection) in each
    masked copy, from the unmasked LayerNorm output ``u`` (B, T, D) and weights (M, T).

    Exact for nn.MultiheadAttention on (LN(X) ⊙ m): the class token's query does not depend
    on m (its weight is 1); q0·b_k is the same for every key, so softmax drops it.
    """
    tokens, width = u.shape[1], u.shape[2]
    size = width // heads
    w_q, w_k, w_v = w_in.chunk(3)
    b_q, b_v = (None, None) if b_in is None else (b_in[:width], b_in[2 * width:])
    q0 = F.linear(u[:, :1], w_q, b_q).reshape(-1, 1, heads, size).transpose(1, 2)
    k = F.linear(u, w_k).reshape(-1, tokens, heads, size).permute(0, 2, 3, 1)
    v = F.linear(u, w_v).reshape(-1, tokens, heads, size).transpose(1, 2)
    logits = torch.matmul(q0 * size ** -0.5, k)                       # (B, H, 1, T)
    attention = torch.softmax(logits * weights, dim=-1) * weights     # (B, H, M, T)
    out = torch.matmul(attention, v).transpose(1, 2).flatten(2)       # (B, M, D)
    if b_v is not None:
        out = out + b_v
    return F.linear(out, w_out, b_out)


def class_token_rows(tokens: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    """(B·M, 1, D): the class token plus its attention output, as sequences of one token."""
    return (tokens[:, :1] + attended).reshape(-1, 1, attended.shape[-1])


# ------------------------------------------------------------------------- tails ---

def sequences_tail(graph: CutGraph, block: TokenBlock) -> fx.GraphModule:
    """``g`` (tokens, masks) → (B, M, classes): every masked sequence through the rest of the
    model; ``block``'s first LayerNorm reads the unmasked tokens and its output is masked."""
    g = fx.Graph()
    tokens, masks = g.placeholder(FEATURE_NAME), g.placeholder(MASKS_NAME)
    weights = g.call_function(token_weights, (masks, block.prefix))
    stream = g.call_function(masked_copies, (tokens, weights))
    plain = g.call_function(plain_copies, (tokens, weights))
    env = {block.input: stream}

    def masked(old: fx.Node, new: fx.Node) -> fx.Node:
        if old is not block.ln1:
            return new
        new.args = (plain, *new.args[1:])
        return g.call_function(masked_rows, (new, weights))

    copy_nodes(g, graph.tail_nodes(block.input), env, graph.f_nodes(block.input), stream, masked)
    g.output(g.call_function(per_image, (env[graph.result], masks)))
    return graph.module(g)


def attention_of(graph: CutGraph, block: TokenBlock) -> tuple[str, fx.Node] | None:
    """(attention module name, residual add) when ``block`` is x + MHA(LN(x)) (dropout
    allowed between) followed by anything on that sum alone, else None."""
    needed = graph.needed
    readers = [u for u in block.input.users if u in needed]
    ln1_readers = [u for u in block.ln1.users if u in needed]
    if len(readers) != 2 or len(ln1_readers) != 1:
        return None
    attention = ln1_readers[0]
    if attention.op != "call_module" or not isinstance(
            graph.gm.get_submodule(attention.target), nn.MultiheadAttention):
        return None
    mha = graph.gm.get_submodule(attention.target)
    if (attention.args[:3] != (block.ln1,) * 3 or len(attention.args) > 3
            or any(k not in ("need_weights",) for k in attention.kwargs)
            or not mha.batch_first or not mha._qkv_same_embed_dim or mha.bias_k is not None
            or mha.add_zero_attn):
        return None
    outputs = [u for u in attention.users if u in needed]
    if len(outputs) != 1 or outputs[0].target.__name__ != "getitem" or outputs[0].args[1] != 0:
        return None
    value = outputs[0]
    while len(value.users) == 1 and _is_dropout(graph, next(iter(value.users))):
        value = next(iter(value.users))
    (add,) = [u for u in readers if u is not block.ln1] or [None]
    if add is None or add.op != "call_function" or getattr(add.target, "__name__", "") not in (
            "add", "iadd") or set(add.args) != {value, block.input} or value.users.keys() != {add}:
        return None
    return attention.target, add


def _is_dropout(graph: CutGraph, node: fx.Node) -> bool:
    return node.op == "call_module" and isinstance(graph.gm.get_submodule(node.target),
                                                   nn.Dropout)


def class_token_tail(graph: CutGraph, block: TokenBlock) -> fx.GraphModule | None:
    """``g`` (tokens, masks) → (B, M, classes) by the class-token shortcut, or None where it
    does not apply (a later block exists, or the block is not LN → MHA → residual)."""
    if block is not list(graph.blocks.values())[-1]:
        return None
    found = attention_of(graph, block)
    if found is None:
        return None
    name, add = found
    mha = graph.gm.get_submodule(name)
    g = fx.Graph()
    tokens, masks = g.placeholder(FEATURE_NAME), g.placeholder(MASKS_NAME)
    weights = g.call_function(token_weights, (masks, block.prefix))
    u = g.call_module(block.ln1.target, (tokens,))

    def param(attr: str, present: bool = True) -> fx.Node | None:
        return g.get_attr(f"{name}.{attr}") if present else None

    attended = g.call_function(class_token_attention, (
        u, weights, param("in_proj_weight"), param("in_proj_bias", mha.in_proj_bias is not None),
        param("out_proj.weight"), param("out_proj.bias", mha.out_proj.bias is not None),
        mha.num_heads))
    rows = g.call_function(class_token_rows, (tokens, attended))
    env = {add: rows}
    before = ancestors(add)
    rest = [n for n in graph.tail_nodes(block.input) if n not in before]
    try:
        copy_nodes(g, rest, env, graph.f_nodes(block.input), rows)
    except KeyError:  # something after the block reads inside it: not this pattern
        return None
    g.output(g.call_function(per_image, (env[graph.result], masks)))
    return graph.module(g)


# -------------------------------------------------------------------- reference ---

def hooked_scores(model: nn.Module, block: TokenBlock, x: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """(M, classes): the whole model on image ``x`` (1, 3, H, W) with the stream entering
    ``block`` and its first LayerNorm's output (of the unmasked stream) replaced by their
    masked copies (weights (M, T)), through the model's own modules (hooks): the definition
    the tails must meet."""
    module = model.get_submodule(block.name)
    ln1 = model.get_submodule(block.ln1.target)
    scale = weights[:, :, None]
    unmasked = []

    def mask_stream(m: nn.Module, args: tuple) -> tuple:
        unmasked.append(args[0])
        return (args[0] * scale, *args[1:])

    hooks = [module.register_forward_pre_hook(mask_stream),
             ln1.register_forward_hook(lambda m, args, out: m.forward(unmasked[-1]) * scale)]
    try:
        with torch.no_grad():
            return model(x.repeat(len(weights), 1, 1, 1))
    finally:
        for hook in hooks:
            hook.remove()
