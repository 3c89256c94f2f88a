"""``--input-size N`` or ``HxW``: the network input's height and width, on both export paths."""

from __future__ import annotations

import argparse
import re

InputSize = int | tuple[int, int]
"""A square side N, or (height, width)."""

_PATTERN = re.compile(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?")


def parse_input_size(text: str) -> tuple[int, int]:
    """``"224"`` → (224, 224); ``"48x192"`` → (48, 192) (height x width). For argparse."""
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid input size '{text}': expected N or HxW in pixels (e.g. 224 or 48x192)")
    h = int(match.group(1))
    return h, int(match.group(2) or h)


def as_hw(size: InputSize | None) -> tuple[int, int] | None:
    """An input size as (height, width); None stays None (the model's own size)."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(
            isinstance(d, int) and not isinstance(d, bool) for d in size):
        return int(size[0]), int(size[1])
    raise ValueError(f"input size must be N or (height, width), got {size!r}")


def checked_size(size: InputSize | None, minimum: int) -> tuple[int, int] | None:
    """``size`` as (height, width), refused (ExportError, one line) below ``minimum``."""
    from .errors import ExportError

    try:
        hw = as_hw(size)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if hw is not None and min(hw) < minimum:
        raise ExportError(f"--input-size {show(hw)} is too small (at least {minimum} on each "
                          "side)")
    return hw


def show(hw: tuple[int, int]) -> str:
    """(48, 192) → ``48x192``, (224, 224) → ``224``: as ``--input-size`` takes it."""
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"
