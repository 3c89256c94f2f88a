"""ReciproCAM: one pass of ``f``, one batched pass of ``g`` over masked maps, no gradients."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .artifact import Artifact
from .backends import Backend, BackendError, Graph, create_backend
from .explanation import Explanation
from .masking import masked_batch, pooled_masked
from .preprocess import DEFAULT_MAX_PIXELS, ImageError, as_rgb, read_image
from .saliency import SCORE_KINDS, normalise, softmax

ImageLike = str | Path | np.ndarray
Targets = int | Sequence[int] | str | None


class ReciproCAM:
    """Explains images with an exported ``f``/``g`` artifact on one backend.

    Graphs are compiled once, in the constructor; :meth:`explain` may be called from
    several threads at once (each thread gets its own infer request / session run).
    """

    def __init__(
        self,
        artifact: str | Path | Artifact,
        backend: str | Backend | None = None,
        device: str | None = None,
        precision: str = "auto",
        scores: str = "logits",
        memory_budget_mb: float = 256.0,
        batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if scores not in SCORE_KINDS:
            raise ValueError(f"scores must be one of {SCORE_KINDS}, got {scores!r}")
        if memory_budget_mb <= 0 or batch_size < 1:
            raise ValueError("memory_budget_mb must be positive and batch_size at least 1")
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        self.backend = backend if isinstance(backend, Backend) else create_backend(
            backend, device, precision)
        self.scores = scores
        self.memory_budget = int(memory_budget_mb * 2**20)
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.preprocessing = self.artifact.preprocessing
        self.uses_pooled_tail = self.artifact.g_starts_with_gap
        self._f = self._compile("f")
        self._tail = self._compile("g_pooled" if self.uses_pooled_tail else "g")

    def _compile(self, role: str) -> Graph:
        for fmt in self.backend.graph_format:
            path = self.artifact.graph_path(role, fmt)
            if path is not None:
                return self.backend.compile(path)
        raise BackendError(
            f"{self.artifact.folder}: no '{role}' graph in a format the {self.backend.name} "
            f"backend reads ({', '.join(self.backend.graph_format)})"
        )

    @property
    def labels(self) -> list[str] | None:
        return self.artifact.labels

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """Run ``f`` on preprocessed inputs (B, 3, H, W) → (B, C, h, w)."""
        return self._f(inputs)

    def rows_per_call(self) -> int:
        """How many masked maps (or pooled vectors) one ``g`` call may take within the budget."""
        c, h, w = self.artifact.feature_shape
        row_bytes = 4 * (c if self.uses_pooled_tail else c * h * w)
        return max(1, self.memory_budget // row_bytes)

    def masked_scores(self, feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of ``g`` on the unmasked map and on all N masked maps of one (C, h, w) feature.

        Returns (num_classes,) and (N, num_classes). The unmasked row rides in the first call.
        """
        c, h, w = feature.shape
        n = h * w
        chunk = self.rows_per_call()
        outputs = []
        if self.uses_pooled_tail:
            rows = np.concatenate([feature.reshape(c, n).mean(axis=1)[None],
                                   pooled_masked(feature)])
            for start in range(0, n + 1, chunk):
                outputs.append(self._tail(rows[start : start + chunk]))
        else:
            for start in range(0, n + 1, chunk):
                stop = min(n + 1, start + chunk)
                parts = [masked_batch(feature, max(0, start - 1), stop - 1)]
                if start == 0:
                    parts.insert(0, feature[None])
                outputs.append(self._tail(np.concatenate(parts) if len(parts) > 1 else parts[0]))
        scores = np.concatenate(outputs)
        return scores[0], scores[1:]

    def resolve_targets(self, unmasked: np.ndarray, targets: Targets, top_k: int) -> np.ndarray:
        """Class indices to explain for one image."""
        num_classes = unmasked.shape[-1]
        if targets is None:
            if not 1 <= top_k <= num_classes:
                raise ValueError(f"top_k must be in 1..{num_classes}, got {top_k}")
            return np.argsort(-unmasked, kind="stable")[:top_k]
        if isinstance(targets, str):
            if targets != "all":
                raise ValueError(f"targets must be None, 'all', or class indices, got {targets!r}")
            return np.arange(num_classes)
        chosen = np.atleast_1d(np.asarray(targets))
        if chosen.size == 0 or not np.issubdtype(chosen.dtype, np.integer):
            raise ValueError(f"targets must be class indices, got {targets!r}")
        bad = chosen[(chosen < 0) | (chosen >= num_classes)]
        if bad.size:
            raise ValueError(f"class {int(bad[0])} out of range (model has {num_classes} classes)")
        return chosen.astype(np.int64)

    def load(self, image: ImageLike) -> tuple[np.ndarray, str]:
        """An image path or array as (RGB uint8 array, display name)."""
        if isinstance(image, (str, Path)):
            try:
                return read_image(image, self.max_pixels), str(image)
            except ImageError as exc:
                raise ImageError(f"{image}: {exc}") from None
        return as_rgb(image), "image"

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        targets: Targets = None,
        top_k: int = 1,
        names: Sequence[str] | None = None,
    ) -> Explanation:
        """Explain one image or a list: ``targets`` None (top_k predicted), an int, ints, 'all'."""
        if isinstance(images, (str, Path, np.ndarray)):
            images = [images]
        loaded = [self.load(image) for image in images]
        if not loaded:
            raise ValueError("no images to explain")
        rgbs = [rgb for rgb, _ in loaded]
        names = list(names) if names is not None else [
            name if name != "image" else f"image{i}" for i, (_, name) in enumerate(loaded)]
        saliency, chosen, scores = [], [], []
        c, h, w = self.artifact.feature_shape
        for start in range(0, len(rgbs), self.batch_size):
            batch = np.concatenate([self.preprocessing(rgb)
                                    for rgb in rgbs[start : start + self.batch_size]])
            for offset, feature in enumerate(self.features(batch)):
                unmasked, masked = self.masked_scores(feature)
                if not (np.isfinite(unmasked).all() and np.isfinite(masked).all()):
                    raise FloatingPointError(
                        f"{names[start + offset]}: the model produced NaN or Inf scores")
                classes = self.resolve_targets(unmasked, targets, top_k)
                if self.scores == "softmax":
                    masked = softmax(masked)
                saliency.append(normalise(masked[:, classes]).reshape(len(classes), h, w))
                chosen.append(classes)
                scores.append(unmasked)
        return Explanation(
            saliency=np.stack(saliency),
            targets=np.stack(chosen),
            scores=np.stack(scores).astype(np.float32),
            images=rgbs,
            boxes=[self.preprocessing.crop_box(*rgb.shape[:2]) for rgb in rgbs],
            names=names,
            labels=self.labels,
        )
