"""Independent reference for masked maps: the whole torch model with its cut layer's output
replaced by F ⊙ M_n, for masks built by hand in the tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def masked_scores(model: torch.nn.Module, layer: str, x: np.ndarray,
                  masks: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """(N, num_classes) scores of ``model`` with ``layer``'s output F (one image ``x``)
    replaced by F ⊙ M_n, for the N masks ``masks(h, w)`` (N, h, w) of F's size."""
    module = dict(model.named_modules())[layer]
    captured = []
    with torch.no_grad():
        handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
        model(torch.from_numpy(x))
        handle.remove()
        feature = captured[0][0]
        chosen = torch.from_numpy(np.asarray(masks(*feature.shape[-2:]))).float()
        masked = feature[None] * chosen[:, None]
        handle = module.register_forward_hook(lambda m, i, o: masked)
        out = model(torch.from_numpy(x).repeat(len(chosen), 1, 1, 1)).double().numpy()
        handle.remove()
    return out


def masked_token_scores(model: torch.nn.Module, block: str, x: np.ndarray,
                        masks: np.ndarray) -> np.ndarray:
    """(N, num_classes) ViT-ReciproCAM scores of ``model`` (one image ``x``): the stream
    entering torchvision encoder block ``block`` weighted by [1 | mask n] per token, and the
    output of its ``ln_1`` (of the unmasked stream) weighted alike, for masks (N, h, w); in
    the model's own float type (float64 after ``model.double()``); a timm ``Block``'s first
    LayerNorm is ``norm1``, a Hugging Face ``ViTLayer``'s ``layernorm_before``."""
    module = dict(model.named_modules())[block]
    ln_1 = next(getattr(module, name) for name in ("ln_1", "norm1", "layernorm_before")
                if hasattr(module, name))
    dtype = next(model.parameters()).dtype
    rows = torch.from_numpy(np.asarray(masks).reshape(len(masks), -1)).to(dtype)
    weights = torch.cat([torch.ones(len(rows), 1, dtype=dtype), rows], dim=1)[:, :, None]
    stream = []

    def mask_stream(m, args):
        stream.append(args[0])
        return (args[0] * weights, *args[1:])

    hooks = [module.register_forward_pre_hook(mask_stream),
             ln_1.register_forward_hook(lambda m, args, out: m.forward(stream[-1]) * weights)]
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(dtype).repeat(len(rows), 1, 1, 1)
                         ).double().numpy()
    finally:
        for hook in hooks:
            hook.remove()
def explicit_window_masks(h: int, w: int, sigma: float = 0.85,
                          strength: float = 4.0) -> np.ndarray:
    """The renormalised window by loops: s·exp(−d²/2σ²) over the whole grid, each mask
    divided by its own sum (so a border mask holds as much as an inner one)."""
    masks = np.zeros((h * w, h, w))
    for n in range(h * w):
        i, j = divmod(n, w)
        for a in range(h):
            for b in range(w):
                masks[n, a, b] = np.exp(-((a - i) ** 2 + (b - j) ** 2) / (2 * sigma**2))
        masks[n] *= strength / masks[n].sum()
    return masks
