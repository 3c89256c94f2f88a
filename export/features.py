"""How every source describes a cut's feature: a C x h x w map, or a token stream on its patch
grid (the grid and leading tokens found from the patch embedding's map, else 1 + a square)."""

from __future__ import annotations

from collections.abc import Sequence

MAX_PREFIX_TOKENS = 8
"""Leading non-patch tokens looked for when a patch map shows the grid (class, distillation,
register tokens)."""


def token_grid(tokens: int, patch_maps: Sequence[tuple[int, int]]
               ) -> tuple[tuple[int, int] | None, int, str | None]:
    """(grid, leading tokens, problem) of ``tokens`` tokens: the grid of the last patch map
    (h, w) that leaves at most :data:`MAX_PREFIX_TOKENS` tokens, else 1 + a square. The
    problem (None when explainable) says why not: ViT-ReciproCAM needs one class token first.
    """
    fits = [hw for hw in patch_maps if 0 <= tokens - hw[0] * hw[1] <= MAX_PREFIX_TOKENS]
    if fits:
        grid = fits[-1]
    else:
        side = int(round((tokens - 1) ** 0.5)) if tokens > 1 else 0
        if side < 2 or side * side != tokens - 1:
            return None, 0, (f"its {tokens} tokens are not 1 class token + a square grid of "
                             "patches, and no patch map shows the grid")
        grid = (side, side)
    prefix = tokens - grid[0] * grid[1]
    if prefix == 1:
        return grid, prefix, None
    if prefix == 0:
        return grid, prefix, (f"its {tokens} tokens are all patches (no class token): the head "
                              "pools over the tokens, which ViT-ReciproCAM does not explain")
    return grid, prefix, (f"its {tokens} tokens are {grid[0]}x{grid[1]} patches and {prefix} "
                          "other tokens; only a single class token first is supported")


def feature_description(shape: tuple[int, ...], grid: tuple[int, int] | None) -> str:
    """A cut's feature as ``--list-layers`` shows it: C x h x w, or T x D tokens with their
    grid (``grid`` given for token cuts)."""
    if grid is None:
        return " x ".join(map(str, shape))
    return f"{shape[0]} x {shape[1]} tokens ({grid[0]}x{grid[1]} grid)"
