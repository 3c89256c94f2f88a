"""The one small interface every inference engine implements."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifact import Artifact, graph_digest

PRECISIONS = ("auto", "f32", "bf16", "f16")
Shape = tuple[int, ...]
"""A tensor shape with -1 for a dynamic axis."""

FeaturesAndScores = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def affine_pair(weight: np.ndarray,
                bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(W, b) as (classes, C) and (classes,) float32, a scalar or missing bias broadcast.

    None when the bias does not fit the weight.
    """
    classes = weight.shape[0]
    bias = np.zeros(classes, np.float32) if bias is None else \
        np.asarray(bias, np.float32).reshape(-1)
    if bias.size == 1:
        bias = np.full(classes, bias[0], np.float32)
    if bias.size != classes:
        return None
    return np.ascontiguousarray(weight, np.float32), np.ascontiguousarray(bias)


class BackendError(ValueError):
    """A backend, device or precision that cannot be used here."""


class Graph(ABC):
    """A compiled graph; safe to call from several threads.

    Graphs take one input, apart from a token artifact's ``g`` (tokens, then mask rows).
    """

    def __call__(self, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
        """Run the graph on ``x`` (and ``more`` inputs, in order; float32) and return its
        first output as float32."""
        return np.asarray(self.outputs(x, *more)[0], dtype=np.float32)

    @abstractmethod
    def outputs(self, x: np.ndarray, *more: np.ndarray) -> list[np.ndarray]:
        """Run the graph on its inputs (float32); every output, in order, as new arrays of
        its own type (the explain graph's ``targets`` are int64)."""


class Backend(ABC):
    """An inference engine bound to one device and precision; compiles graph files."""

    name: str = ""
    graph_format: tuple[str, ...] = ()
    """Artifact formats this backend reads, preferred first."""
    engine_version: str = ""
    """The engine's version: part of every compile-cache key."""
    static_shapes: int = 0
    """Static copies a graph with a dynamic batch may compile for the shapes it runs (OpenVINO);
    0: every graph runs as exported."""

    def __init__(self, device: str, precision: str = "auto",
                 cache_dir: str | Path | None = None) -> None:
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r} (choose from {PRECISIONS})")
        self.device = device
        self.precision = precision
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        """Where compiled / optimised graphs are cached so that a second start is faster."""

    def graph_file(self, artifact: Artifact, role: str) -> Path:
        """The artifact's graph ``role`` in the first format this backend reads."""
        for fmt in self.graph_format:
            path = artifact.graph_path(role, fmt)
            if path is not None:
                return path
        raise BackendError(f"{artifact.folder}: no '{role}' graph in a format the {self.name} "
                           f"backend reads ({', '.join(self.graph_format)})")

    @abstractmethod
    def compile(self, path: Path, digest: str | None = None) -> Graph:
        """Load and compile one graph file for this backend's device.

        ``digest`` stands for every byte the graph reads (``Artifact.graph_digest``, from
        the verified manifest); the compile cache is keyed on it, so a cached entry can only
        stand for those bytes. None: hashed from the files (``artifact.graph_digest``).
        """

    def cache_key(self, path: Path, digest: str | None = None) -> str:
        """What a compiled form of ``path`` is cached under: its content, this engine's
        device and precision, never its file name or time stamp."""
        digest = digest or graph_digest(path)
        return hashlib.sha256(f"{digest}|{self!r}|{self.engine_version}".encode()).hexdigest()[:24]

    def compile_pooled_explainer(self, f_path: Path, tail_path: Path,
                                 feature_shape: tuple[int, int, int],
                                 masks: np.ndarray | None = None) -> Graph | None:
        """``f`` and the GAP-shortcut tail as one graph, or None where this backend cannot fuse.

        The graph maps inputs (B, 3, H, W) to scores (B, N + 1, num_classes): row 0 is
        ``g_pooled`` of the unmasked map's global average, row n + 1 is ``g_pooled`` of the
        exact global average of masked map n: F[:, n] / N (Eq. 5) when ``masks`` is None,
        else of F ⊙ M_n for ``masks`` (N, h, w).
        """
        return None

    def compile_features_and_scores(self, f_path: Path, tail_path: Path
                                    ) -> FeaturesAndScores | None:
        """``f`` and ``g_pooled`` of its global average as one graph with two outputs.

        The callable maps inputs (B, 3, H, W) to (features (B, C, h, w), scores
        (B, num_classes)); None where this backend cannot fuse graphs.
        """
        return None

    def io_shapes(self, path: Path, digest: str | None = None) -> tuple[Shape, Shape] | None:
        """(input, output) shapes declared by the graph file, or None where not readable."""
        return None

    def affine_tail(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        """(W, b) when the graph at ``path`` is exactly one affine layer y = x·Wᵀ + b, else None.

        W is (num_classes, C) and b (num_classes,), float32. With them a pooled tail's
        scores for a few classes cost a few dot products (DESIGN.md: the affine rows).
        """
        return None

    @property
    def inference_precision(self) -> str:
        """The precision the engine computes in: ``precision``, or for "auto" the device's
        default ("f32" unless a backend knows better)."""
        return "f32" if self.precision == "auto" else self.precision

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, precision={self.precision!r})"
