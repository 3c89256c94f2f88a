"""The feature section of a detection artifact: several levels cut at once, one grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _is_shape(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)


def validate_levels(feature: dict[str, Any], require: Callable[[bool, str], None]) -> None:
    """``feature`` of a detector: ``kind`` levels, ``levels`` a list of {name, shape [C, h,
    w]} (the inputs of ``g``, in order), ``grid`` the index of the level whose grid the masks
    use; every level's grid nests with it (one side a multiple of the other's)."""
    levels = feature.get("levels")
    require(feature.get("kind") == "levels" and isinstance(levels, list) and levels
            and all(isinstance(v, dict) and isinstance(v.get("name"), str)
                    and _is_shape(v.get("shape")) for v in levels),
            "'feature' of a detector must have kind 'levels' and levels [{name, shape [C, h, "
            "w]}, ...]")
    grid = feature.get("grid")
    require(isinstance(grid, int) and not isinstance(grid, bool) and 0 <= grid < len(levels),
            "'feature.grid' must be a level index")
    _, gh, gw = levels[grid]["shape"]
    for v in levels:
        _, h, w = v["shape"]
        require((h % gh == 0 and w % gw == 0) or (gh % h == 0 and gw % w == 0),
                f"level {v['name']} ({h}x{w}) does not nest with the {gh}x{gw} grid")
