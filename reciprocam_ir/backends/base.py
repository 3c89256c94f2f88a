"""The one small interface every inference engine implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

PRECISIONS = ("auto", "f32", "bf16", "f16")


class BackendError(ValueError):
    """A backend, device or precision that cannot be used here."""


class Graph(ABC):
    """A compiled graph with one input and one output; safe to call from several threads."""

    @abstractmethod
    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the graph on ``x`` (float32) and return its output as a new float32 array."""


class Backend(ABC):
    """An inference engine bound to one device and precision; compiles graph files."""

    name: str = ""
    graph_format: tuple[str, ...] = ()
    """Artifact formats this backend reads, preferred first."""

    def __init__(self, device: str, precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r} (choose from {PRECISIONS})")
        self.device = device
        self.precision = precision

    @abstractmethod
    def compile(self, path: Path) -> Graph:
        """Load and compile one graph file for this backend's device."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, precision={self.precision!r})"
