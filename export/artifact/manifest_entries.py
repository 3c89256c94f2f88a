"""The manifest entries that both export paths (a PyTorch model, a graph file) write the same
way; the schema itself is :mod:`reciprocam_ir.artifact`'s."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from reciprocam_ir.artifact import FEATURE_NAME, MASKS_NAME, POOLED_NAME


class Tokens(Protocol):
    """A token cut's layout, as both cut kinds describe it."""

    grid: tuple[int, int]
    prefix: int


def feature_entry(shape: tuple[int, ...], tokens: Tokens | None) -> dict[str, Any]:
    """``feature``: the cut's (C, h, w) map, or for a token cut its (T, D) tokens on their
    grid after the leading non-patch tokens."""
    if tokens is None:
        return {"name": FEATURE_NAME, "shape": list(shape)}
    return {"name": FEATURE_NAME, "kind": "tokens", "shape": list(shape),
            "grid": list(tokens.grid), "prefix_tokens": tokens.prefix}


def tail_entries(shape: tuple[int, ...], pooled: bool, token_tail: str | None
                 ) -> dict[str, Any]:
    """``g_starts_with_gap``, ``pooled`` and, for a token cut, ``token_tail``."""
    return {"g_starts_with_gap": pooled,
            "pooled": {"name": POOLED_NAME, "shape": [shape[0]]} if pooled else None,
            **({"token_tail": {"kind": token_tail, "masks_name": MASKS_NAME}}
               if token_tail is not None else {})}


def graphs_entry(roles: Iterable[str], fmt: str) -> dict[str, dict[str, str]]:
    """``graphs``: each role's file per format written (``fmt`` onnx, ir or both)."""
    return {role: {**({"onnx": f"{role}.onnx"} if fmt != "ir" else {}),
                   **({"ir": f"{role}.xml"} if fmt != "onnx" else {})} for role in roles}


def describe_preprocessing(options: Mapping[str, Any]) -> str:
    """A one-line account of a manifest's ``input`` recipe, for the export log."""
    resize = options["resize"]
    how = {"direct": "resize to the input size",
           "shorter_side_crop": f"shorter side to {options.get('resize_size')}, centre crop",
           "squash_crop": f"both sides to {options.get('resize_size')}, centre crop",
           "pad": "fit inside, pad"}.get(resize, resize)
    mean = ", ".join(f"{v:g}" for v in options["mean"])
    std = ", ".join(f"{v:g}" for v in options["std"])
    resampling = f"{options.get('interpolation', 'bilinear')}, " \
        f"{options.get('resampler', 'torchvision')}"
    return (f"{how} ({resampling}), x {options['scale']:.6g}, "
            f"mean ({mean}), std ({std}), {options['color']}")
