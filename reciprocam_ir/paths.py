"""How one batch becomes scores, targets and maps: one small object per path, one call shape.

:class:`~reciprocam_ir.explainer.ReciproCAM` picks its paths once, at construction; each path
maps a preprocessed batch to one :data:`Result` per image:

- :class:`ExplainGraph` — the artifact's explain graph, one inference for everything, when
  it computes the requested map (targets None, top_k ≤ its K, its mask and scores);
- :class:`AffineRows` — an affine head after the GAP: ``f`` (with the head, fused where the
  backend can) and the N masked scores of only the chosen classes, rows · W[k] + b[k];
- :class:`AllRows` — every class of every masked row: ``f`` and the pooled tail fused in one
  graph, or ``g`` on the N masked maps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .saliency import normalise, softmax

Targets = int | Sequence[int] | str | None
Result = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(scores (num_classes,), targets (K,), maps (K, N) in [0, 1]; NaN where a score was NaN)."""


def resolve_targets(unmasked: np.ndarray, targets: Targets, top_k: int) -> np.ndarray:
    """Class indices to explain for one image (options already checked)."""
    if targets is None:
        return np.argsort(-unmasked, kind="stable")[:top_k]
    if isinstance(targets, str):
        return np.arange(unmasked.shape[-1])
    return np.atleast_1d(np.asarray(targets)).astype(np.int64)


@dataclass(frozen=True)
class Scoring:
    """How the masked scores of the chosen classes become maps (Eq. 6)."""

    softmax: bool = False
    """Score masked rows by probabilities over all classes (needs every class of every row)."""
    negate: bool = False
    """A removing mask: a low score marks a salient position."""

    def maps(self, masked: np.ndarray) -> np.ndarray:
        """(N, K) masked scores → (K, N) maps."""
        return normalise(-masked if self.negate else masked)


class ExplainPath(ABC):
    """One way to explain a preprocessed batch."""

    name: str = ""
    """What it runs, as the benchmark table names it."""

    @abstractmethod
    def __call__(self, batch: np.ndarray, targets: Targets, top_k: int) -> Iterator[Result]:
        """One :data:`Result` per image of ``batch`` (B, 3, H, W) or (B, H, W, 3)."""


class ExplainGraph(ExplainPath):
    """The explain graph: ``scores``, ``targets`` and ``saliency`` from one inference.

    Serves requests for its own K or fewer top classes; ``images_per_call`` bounds how many
    images share one inference (a tail without GAP holds N + 1 maps per image).
    """

    name = "explain graph"

    def __init__(self, run: Callable[[np.ndarray], list[np.ndarray]], top_k: int,
                 images_per_call: int) -> None:
        self.run = run
        self.top_k = top_k
        self.images_per_call = max(1, images_per_call)

    def serves(self, targets: Targets, top_k: int) -> bool:
        return targets is None and top_k <= self.top_k

    def __call__(self, batch: np.ndarray, targets: Targets, top_k: int) -> Iterator[Result]:
        for start in range(0, len(batch), self.images_per_call):
            scores, chosen, saliency = self.run(batch[start : start + self.images_per_call])
            for s, t, m in zip(scores, chosen, saliency, strict=True):
                yield s, t[:top_k].astype(np.int64), m[:top_k].reshape(top_k, -1)


class AffineRows(ExplainPath):
    """An affine pooled head: masked scores of the chosen classes only, rows · W[k]ᵀ + b[k].

    ``features_and_scores`` yields each image's feature map with its unmasked scores (one
    inference where the backend fuses ``f`` and the head); ``rows`` gives the exact GAP of
    every masked map, (N, C). The bias b[k], the same for every row, is left out: Eq. 6 does
    not change, and in float32 adding it would bury differences between rows far smaller
    than it (a 24×96 map: spans of 1e-3 next to a bias of 2 lost 1e-4 of every map).
    """

    def __init__(self, name: str,
                 features_and_scores: Callable[[np.ndarray], Iterable[tuple[np.ndarray,
                                                                            np.ndarray]]],
                 affine: tuple[np.ndarray, np.ndarray],
                 rows: Callable[[np.ndarray], np.ndarray], scoring: Scoring) -> None:
        self.name = name
        self.features_and_scores = features_and_scores
        self.weight = affine[0]
        self.rows = rows
        self.scoring = scoring

    def __call__(self, batch: np.ndarray, targets: Targets, top_k: int) -> Iterator[Result]:
        for feature, unmasked in self.features_and_scores(batch):
            classes = resolve_targets(unmasked, targets, top_k)
            masked = self.rows(feature) @ self.weight[classes].T
            yield unmasked, classes, self.scoring.maps(masked)


class AllRows(ExplainPath):
    """Every class of every masked row, then the chosen classes' columns.

    ``per_image`` yields (unmasked (num_classes,), masked (N, num_classes)) per image.
    """

    def __init__(self, name: str,
                 per_image: Callable[[np.ndarray], Iterable[tuple[np.ndarray, np.ndarray]]],
                 scoring: Scoring) -> None:
        self.name = name
        self.per_image = per_image
        self.scoring = scoring

    def __call__(self, batch: np.ndarray, targets: Targets, top_k: int) -> Iterator[Result]:
        for unmasked, masked in self.per_image(batch):
            classes = resolve_targets(unmasked, targets, top_k)
            if self.scoring.softmax:
                masked = softmax(masked)
            yield unmasked, classes, self.scoring.maps(masked[:, classes])
