"""Which classes a request may ask to explain: the one rule behind the API, the CLI, the
server and the dataset runner.

Explicit class indices are checked against the model and de-duplicated (first occurrence
kept); the number of classes explained per image (the targets after de-duplication, every
class for ``"all"``, or ``top_k``) may not exceed ``max_targets``, so that a short request
cannot ask for an answer of unbounded size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Targets = int | Sequence[int] | str | None

DEFAULT_MAX_TARGETS = 1000
"""Classes explained per image unless raised (ImageNet's 1000: ``"all"`` fits there)."""


def check_max_targets(max_targets: int) -> None:
    """Refuse a limit that is not a positive integer (ValueError, one line)."""
    if isinstance(max_targets, bool) or not isinstance(max_targets, (int, np.integer)) \
            or max_targets < 1:
        raise ValueError(f"max_targets must be an integer of at least 1, got {max_targets!r}")


def checked_targets(targets: Targets, top_k: int, num_classes: int,
                    max_targets: int = DEFAULT_MAX_TARGETS) -> Targets:
    """The request's targets, checked and de-duplicated: None, ``"all"`` or a list of
    distinct class indices in the order first given. ValueError (one line) for a request
    that names no valid classes or more than ``max_targets`` per image."""
    if targets is not None and top_k not in (None, 1):
        raise ValueError(f"top_k={top_k!r} applies only to the predicted classes "
                         "(targets=None); the classes to explain are given")
    if targets is None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) \
                or not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be an integer in 1..{num_classes}, got {top_k!r}")
        _check_count(int(top_k), max_targets, "top_k")
        return None
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets must be None, 'all', or class indices, got {targets!r}")
        _check_count(num_classes, max_targets, "targets 'all'")
        return targets
    chosen = np.atleast_1d(np.asarray(targets))
    if chosen.size == 0 or chosen.ndim != 1 or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(f"targets must be class indices, got {_short(targets)}")
    bad = chosen[(chosen < 0) | (chosen >= num_classes)]
    if bad.size:
        raise ValueError(f"class {int(bad[0])} out of range (model has {num_classes} classes)")
    distinct = list(dict.fromkeys(int(c) for c in chosen))
    _check_count(len(distinct), max_targets, "targets")
    return distinct


def _check_count(count: int, max_targets: int, what: str) -> None:
    if count > max_targets:
        raise ValueError(f"{what} asks for {count} classes per image, more than the limit of "
                         f"{max_targets}")


def _short(value: object, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters: a refusal never echoes a long request."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
