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

from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME

from .graph_cut import CutGraph, TokenBlock, ancestors, copy_nodes, shape_of

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


@dataclass(frozen=True)
class BlockAttention:
    """The attention of a pre-norm block x + A(LN(x)) in the terms of
    :func:`class_token_attention`: its parameters (qualified names; None where absent), its
    output node, the per-token nodes between that output and the residual sum ``add`` (dropout,
    identity, timm's LayerScale), and the sum."""

    w_in: str
    b_in: str | None
    w_out: str
    b_out: str | None
    heads: int
    output: fx.Node
    after: tuple[fx.Node, ...]
    add: fx.Node


def attention_of(graph: CutGraph, block: TokenBlock) -> BlockAttention | None:
    """The attention of ``block`` when it is x + A(LN(x)) with A torch's
    ``nn.MultiheadAttention`` or timm's plain ``Attention`` (no q/k norm, gate or mask), and
    nothing else reads inside it; else None."""
    needed = graph.needed
    readers = [u for u in block.input.users if u in needed]
    if len(readers) != 2:
        return None
    found = _torch_attention(graph, block) or _timm_attention(graph, block)
    if found is None:
        return None
    output, params = found
    after, value = [], output
    while True:
        users = [u for u in value.users if u in needed]
        if len(users) != 1:
            return None
        if not _is_per_token(graph, users[0]):
            break
        value = users[0]
        after.append(value)
    (add,) = users
    if add.op != "call_function" or getattr(add.target, "__name__", "") not in (
            "add", "iadd") or set(add.args) != {value, block.input} or add not in readers:
        return None
    inside = ancestors(output)
    if any(u in needed and u not in inside and u is not output for u in block.ln1.users):
        return None
    return BlockAttention(*params, output, tuple(after), add)


def _torch_attention(graph: CutGraph, block: TokenBlock
                     ) -> tuple[fx.Node, tuple] | None:
    ln1_readers = [u for u in block.ln1.users if u in graph.needed]
    if len(ln1_readers) != 1:
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
    outputs = [u for u in attention.users if u in graph.needed]
    if len(outputs) != 1 or outputs[0].target.__name__ != "getitem" or outputs[0].args[1] != 0:
        return None
    name = attention.target
    return outputs[0], (f"{name}.in_proj_weight",
                        f"{name}.in_proj_bias" if mha.in_proj_bias is not None else None,
                        f"{name}.out_proj.weight",
                        f"{name}.out_proj.bias" if mha.out_proj.bias is not None else None,
                        mha.num_heads)


def _timm_attention(graph: CutGraph, block: TokenBlock) -> tuple[fx.Node, tuple] | None:
    """timm's ``Attention`` child reading the LayerNorm: a fused ``qkv`` Linear ([q; k; v],
    as nn.MultiheadAttention's in_proj), softmax(q·kᵀ/√d)·v per head, a ``proj`` Linear."""
    for child, module in graph.model.get_submodule(block.name).named_children():
        name = f"{block.name}.{child}"
        if graph.module_inputs.get(name) is block.ln1 and _is_plain_timm_attention(module):
            output = graph.module_outputs.get(name)
            if output is None:
                return None
            return output, (f"{name}.qkv.weight",
                            f"{name}.qkv.bias" if module.qkv.bias is not None else None,
                            f"{name}.proj.weight",
                            f"{name}.proj.bias" if module.proj.bias is not None else None,
                            module.num_heads)
    return None


def _is_plain_timm_attention(module: nn.Module) -> bool:
    """timm.layers.Attention with nothing the shortcut leaves out (q/k norms, an output
    norm, a gate) and the standard scale; checked by its class, not imported (no timm
    dependency)."""
    kind = type(module)
    if kind.__name__ != "Attention" or not kind.__module__.startswith("timm."):
        return False
    qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
    if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
        return False
    width = qkv.in_features
    heads, size = getattr(module, "num_heads", 0), getattr(module, "head_dim", 0)
    return (qkv.out_features == 3 * width and proj.in_features == width == heads * size
            and all(isinstance(getattr(module, a, None), nn.Identity)
                    for a in ("q_norm", "k_norm", "norm"))
            and getattr(module, "gate", None) is None
            and abs(float(getattr(module, "scale", 0.0)) - size ** -0.5) < 1e-12)


def _is_per_token(graph: CutGraph, node: fx.Node) -> bool:
    """An identity, a dropout (eval), or a product with a (D,) parameter (timm's LayerScale)."""
    if node.op == "call_module":
        return isinstance(graph.gm.get_submodule(node.target), (nn.Identity, nn.Dropout))
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name not in ("mul", "mul_") or len(node.args) != 2 or node.kwargs:
        return False
    scale = [a for a in node.args if isinstance(a, fx.Node) and a.op == "get_attr"]
    width = shape_of(node)
    return len(scale) == 1 and width is not None and shape_of(scale[0]) == (width[-1],)


def class_token_tail(graph: CutGraph, block: TokenBlock) -> fx.GraphModule | None:
    """``g`` (tokens, masks) → (B, M, classes) by the class-token shortcut, or None where it
    does not apply (a later block exists, or the block is not LN → attention → residual)."""
    if block is not list(graph.blocks.values())[-1]:
        return None
    found = attention_of(graph, block)
    if found is None:
        return None
    g = fx.Graph()
    tokens, masks = g.placeholder(FEATURE_NAME), g.placeholder(MASKS_NAME)
    weights = g.call_function(token_weights, (masks, block.prefix))
    u = _copy_with_parameters(g, block.ln1, {block.input: tokens})

    def param(name: str | None) -> fx.Node | None:
        return None if name is None else g.get_attr(name)

    attended = g.call_function(class_token_attention, (
        u, weights, param(found.w_in), param(found.b_in), param(found.w_out),
        param(found.b_out), found.heads))
    env = {found.output: attended}
    for node in found.after:
        attended = _copy_with_parameters(g, node, env)
        env[node] = attended
    rows = g.call_function(class_token_rows, (tokens, attended))
    env = {found.add: rows}
    before = ancestors(found.add)
    rest = [n for n in graph.tail_nodes(block.input) if n not in before]
    try:
        copy_nodes(g, rest, env, graph.f_nodes(block.input), rows)
    except KeyError:  # something after the block reads inside it: not this pattern
        return None
    g.output(g.call_function(per_image, (env[graph.result], masks)))
    return graph.module(g)


def _copy_with_parameters(g: fx.Graph, node: fx.Node, env: dict[fx.Node, fx.Node]) -> fx.Node:
    """``node`` copied into ``g`` with its inputs from ``env``, its parameters (get_attr)
    copied alongside."""
    for a in node.all_input_nodes:
        if a not in env and a.op == "get_attr":
            env[a] = g.node_copy(a)
    return g.node_copy(node, lambda a: env[a])


# -------------------------------------------------------------------- reference ---

def hooked_scores(model: nn.Module, block: TokenBlock, x: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """(M, classes): the whole model on image ``x`` (1, 3, H, W) with the stream entering
    ``block`` and its first LayerNorm's output (of the unmasked stream) replaced by their
    masked copies (weights (M, T)), through the model's own modules (hooks): the definition
    the tails must meet."""
    module = model.get_submodule(block.name)
    ln1 = model.get_submodule(block.ln1_name)
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
