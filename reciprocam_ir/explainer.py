"""ReciproCAM: one pass of ``f``, one batched pass of ``g`` over masked maps, no gradients."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from numbers import Real
from pathlib import Path

import numpy as np

from .artifact import MANIFEST_NAME, Artifact
from .backends import Backend, BackendError, Graph, create_backend
from .backends.base import FeaturesAndScores
from .explanation import Explanation
from .image_reader import DECODE_MODES, MinSize, image_size
from .mask_options import mask_option_problem
from .masking import (
    DEFAULT_WINDOW_STRENGTH,
    MASK_KINDS,
    REMOVING_MASKS,
    check_sigma,
    check_strength,
    default_scores,
    default_sigma,
    mask_rows,
    masked_batch,
    pooled_masked,
    spatial_masks,
    weighted_masked_batch,
    weighted_pooled_masked,
)
from .paths import (
    AffineRows,
    AllRows,
    ExplainGraph,
    ExplainPath,
    Result,
    Scoring,
    Targets,
    resolve_targets,
)
from .precision import warn_if_coarse
from .preprocess import DEFAULT_MAX_PIXELS, ImageLike, load_image, load_images
from .saliency import SCORE_KINDS
from .targets import DEFAULT_MAX_TARGETS, check_max_targets, checked_targets

MAX_MEMORY_BUDGET_MB = float(1 << 20)
"""1 TiB: a larger budget is a typo (or inf), not a machine."""


TOKEN_SEQUENCE_FLOATS = 8
"""Floats per token per masked sequence the sequences tail holds at once (its stream,
LayerNorm, query/key/value, attention output and an MLP hidden layer of 4 D): a
deliberately round estimate for the memory budget."""


def check_options(scores: str | None, memory_budget_mb: float, batch_size: int,
                  mask: str | None, mask_sigma: float | None,
                  mask_strength: float | None = None) -> None:
    """Refuse, before anything is loaded, options that are out of range or contradict each
    other (ValueError, one line naming the option). ``mask`` None: the artifact's default;
    ``scores`` None: the mask's own."""
    if scores is not None and scores not in SCORE_KINDS:
        raise ValueError(f"scores must be one of {SCORE_KINDS}, got {scores!r}")
    if isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, Real) \
            or not 0 < memory_budget_mb <= MAX_MEMORY_BUDGET_MB:
        raise ValueError(f"memory_budget_mb must be a number of MiB in "
                         f"(0, {MAX_MEMORY_BUDGET_MB:.0f}], got {memory_budget_mb!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    if mask is not None and mask not in MASK_KINDS:
        raise ValueError(f"mask must be one of {MASK_KINDS}, got {mask!r}")
    problem = mask_option_problem(mask, mask_sigma, mask_strength)
    if problem is not None:
        raise ValueError(problem)
    if mask_sigma is not None:
        check_sigma(mask_sigma)
    if mask_strength is not None:
        check_strength(mask_strength)


def is_detection(artifact: str | Path | Artifact) -> bool:
    """Whether ``artifact`` (a folder or a loaded one) says ``task: detect``; an unreadable
    manifest is left for :meth:`Artifact.load` to refuse."""
    if isinstance(artifact, Artifact):
        return artifact.task == "detect"
    try:
        manifest = json.loads((Path(artifact) / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError, TypeError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("task") == "detect"


class ReciproCAM:
    """Explains images with an exported ``f``/``g`` artifact on one backend.

    Graphs are compiled once per object. Paths are picked once, here: the artifact's explain
    graph for the requests it computes (:meth:`path_for`), else the fastest general path the
    head and backend allow (:attr:`path`). :meth:`explain` may be called from several
    threads at once (each thread gets its own infer request / session run).
    ``explain_graph=False`` never uses the explain graph (to compare paths). ``scores`` None
    scores masked maps as the mask is defined: softmax for ``window``, logits otherwise.
    ``decode="exact"`` (default) decodes every image in full: torchvision's recipe as the
    manifest states it. ``decode="reduced"`` decodes JPEG paths at the smallest DCT scale
    that leaves :data:`.DECODE_MARGIN` times the resize target (shrink on load, several
    times faster on photos; not the default because it moved one photo's map by 0.056,
    docs/performance.md).
    """

    def __new__(cls, artifact: str | Path | Artifact, *args: object, **kwargs: object
                ) -> ReciproCAM:
        """A :class:`~reciprocam_ir.detection_cam.DetectionCAM` for a detection artifact
        (DESIGN.md, "Detection artifacts"), else a ReciproCAM."""
        if cls is ReciproCAM and is_detection(artifact):
            from .detection_cam import DetectionCAM

            return DetectionCAM(artifact, *args, **kwargs)  # type: ignore[return-value]
        return super().__new__(cls)

    def __init__(
        self,
        artifact: str | Path | Artifact,
        backend: str | Backend | None = None,
        device: str | None = None,
        precision: str = "auto",
        scores: str | None = None,
        memory_budget_mb: float = 256.0,
        batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        mask: str | None = None,
        mask_sigma: float | None = None,
        mask_strength: float | None = None,
        cache_dir: str | Path | None = None,
        explain_graph: bool = True,
        max_targets: int = DEFAULT_MAX_TARGETS,
        decode: str = "exact",
    ) -> None:
        check_options(scores, memory_budget_mb, batch_size, mask, mask_sigma, mask_strength)
        check_max_targets(max_targets)
        self.max_targets = int(max_targets)
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        if mask is None:  # the artifact's own explanation: its explain graph's mask and scores
            mask = self.artifact.default_mask
            spec = self.artifact.explain
            if spec is not None:
                mask_sigma, mask_strength = spec["mask_sigma"], spec["mask_strength"]
                scores = spec["scores"] if scores is None else scores
        self._tokens = self.artifact.tokens
        self.backend = backend if isinstance(backend, Backend) else create_backend(
            backend, device, precision, cache_dir)
        # scores None: the mask's own (softmax for the window, logits otherwise)
        self.scores = default_scores(mask) if scores is None else scores
        # mask: 'onehot' (Eq. 5), 'gaussian' (the authors' spread variant; ViT-ReciproCAM's,
        # the default for token artifacts), 'drop' (a soft window removed instead of kept) or
        # 'window' (a soft window kept, renormalised over the grid, at a strength); σ in
        # feature cells, see masking.spatial_masks
        self.mask = mask
        self._sigma = mask_sigma
        self._strength = mask_strength
        self.memory_budget = int(memory_budget_mb * 2**20)
        self._masks = None if mask == "onehot" else self._spatial_masks()
        _, h, w = self.artifact.feature_shape
        self._mask_rows = mask_rows(h * w, self._masks) if self._tokens is not None else None
        self.batch_size = batch_size if self.artifact.images_per_call is None else \
            min(batch_size, self.artifact.images_per_call)
        self.max_pixels = max_pixels
        self.preprocessing = self.artifact.preprocessing
        self.uses_pooled_tail = self.artifact.g_starts_with_gap
        self._softmax = self.scores == "softmax" and self.artifact.outputs_logits
        self.rows_per_call()  # refuse, up front, a budget that cannot hold one masked map
        self._tail_role = "g_pooled" if self.uses_pooled_tail else "g"
        for role in ("f", self._tail_role):
            self._check_io(role)
        self._graphs: dict[str, Graph] = {}
        self._lock = threading.Lock()
        self._precision = self.backend.inference_precision  # what the maps are checked for
        self._precision_warned = False
        self._affine = self._affine_tail()
        # a model that outputs probabilities (exported with --keep-softmax) is scored as is
        self.scoring = Scoring(softmax=self._softmax, negate=mask in REMOVING_MASKS)
        self._general: ExplainPath | None = None
        self._path_lock = threading.Lock()
        self.graph_path = self._explain_graph() if explain_graph else None
        if self.graph_path is None:
            self._general = self._general_path()

    @property
    def path(self) -> ExplainPath:
        """The general path (any targets): compiled on first use when the explain graph
        serves the default requests."""
        with self._path_lock:
            if self._general is None:
                self._general = self._general_path()
            return self._general

    def path_for(self, targets: Targets, top_k: int) -> ExplainPath:
        """The path a request takes: the explain graph when it computes what is asked."""
        if self.graph_path is not None and self.graph_path.serves(targets, top_k):
            return self.graph_path
        return self.path

    def _general_path(self) -> ExplainPath:
        """The fastest path for any targets that this head and backend allow.

        A token artifact: ``f``, then its tail on the mask rows. Affine rows when the pooled
        head is one affine layer and logits are scored (only the K classes' rows); else ``f``
        and the pooled tail fused in one graph; else ``f`` and ``g`` separately (the pooled
        tail on N vectors, or ``g`` on N masked maps).
        """
        if self._tokens is not None:
            self._graph("f")
            self._graph("g")
            return AllRows(f"f, token tail ({self._tokens.tail.replace('_', ' ')})",
                           self._token_scores, self.scoring)
        if self._affine is not None and not self._softmax:
            fused = self.backend.compile_features_and_scores(self._path("f"),
                                                             self._path("g_pooled"))
            return AffineRows("f+head fused, affine rows" if fused else "f, head, affine rows",
                              self._features_and_scores(fused), self._affine,
                              self._pooled_rows, self.scoring)
        fused = self._compile_pooled_explainer()
        if fused is not None:
            return AllRows("f+pooled tail fused",
                           lambda batch: ((rows[0], rows[1:]) for rows in fused(batch)),
                           self.scoring)
        self._graph("f")
        self._graph(self._tail_role)
        return AllRows("f, pooled tail" if self.uses_pooled_tail else "f, g (N masked maps)",
                       lambda batch: (self.masked_scores(feature)
                                      for feature in self.features(batch)),
                       self.scoring)

    def _explain_graph(self) -> ExplainGraph | None:
        """The artifact's explain graph, when it computes this object's map (else None)."""
        spec = self.artifact.explain
        if spec is None or spec["mask"] != self.mask or (
                spec["scores"] == "softmax" and self.artifact.outputs_logits) != self._softmax \
                or (self.mask != "onehot" and spec["mask_sigma"] != self.mask_sigma) \
                or spec["mask_strength"] != self.mask_strength:
            return None
        try:
            self._path("explain")  # refused when no file of this backend's format
        except BackendError:
            return None
        per_image = (self.artifact.feature_shape[1] * self.artifact.feature_shape[2] + 1) \
            * self._row_bytes()
        if per_image > self.memory_budget:
            return None
        self._check_io("explain")
        return ExplainGraph(self._compile("explain").outputs, spec["top_k"],
                            self.memory_budget // per_image)

    def _check_io(self, role: str) -> None:
        """Refuse graph ``role`` when its declared shapes contradict the manifest."""
        path = self._path(role)
        shapes = self.backend.io_shapes(path, self.artifact.graph_digest(path))
        if shapes is not None:
            self.artifact.check_io(role, shapes)

    @property
    def mask_sigma(self) -> float | None:
        """σ of the mask in feature cells (None for the onehot mask)."""
        if self.mask == "onehot":
            return None
        return default_sigma(self.mask) if self._sigma is None else float(self._sigma)

    @property
    def mask_strength(self) -> float | None:
        """Strength of the window mask (None for the other kinds)."""
        if self.mask != "window":
            return None
        return DEFAULT_WINDOW_STRENGTH if self._strength is None else float(self._strength)

    def _features_and_scores(self, fused: FeaturesAndScores | None
                             ) -> Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray]]]:
        """(feature map, unmasked scores) per image: one inference where the backend fuses."""
        def run(batch: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            if fused is not None:
                features, scores = fused(batch)
                yield from zip(features, scores, strict=True)
                return
            tail = self._graph(self._tail_role)
            for feature in self.features(batch):
                yield feature, tail(self._pooled_mean(feature))[0]

        return run

    def _affine_tail(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(W, b) when ``g_pooled`` is one affine layer, else None.

        Then the masked scores of class k are rows·W[k] + b[k] (rows: the exact GAP of the
        masked maps), so only the requested classes are computed, in numpy, after ``f``;
        the unmasked scores still come from ``g_pooled`` itself (fused with ``f`` where the
        backend can, so an explanation costs one inference of the plain model).
        """
        if not self.uses_pooled_tail:
            return None
        affine = self.backend.affine_tail(self._path("g_pooled"))
        c = self.artifact.feature_shape[0]
        if affine is not None and affine[0].shape == (self.artifact.num_classes, c):
            return affine
        return None

    def _compile_pooled_explainer(self) -> Graph | None:
        """``f`` and the pooled tail fused into one graph, where the backend can and it fits."""
        c, h, w = self.artifact.feature_shape
        n = h * w
        # the fused graph holds an (N + 1) x N pooling matrix: only where the budget holds it
        if not self.uses_pooled_tail or self.rows_per_call() < n + 1 \
                or 4 * (n + 1) * n > self.memory_budget:
            return None
        return self.backend.compile_pooled_explainer(self._path("f"), self._path("g_pooled"),
                                                     (c, h, w), self._masks)

    def _graph(self, role: str) -> Graph:
        """The compiled graph ``role``, compiled on first use."""
        with self._lock:
            if role not in self._graphs:
                self._graphs[role] = self._compile(role)
            return self._graphs[role]

    def _compile(self, role: str) -> Graph:
        path = self._path(role)
        return self.backend.compile(path, self.artifact.graph_digest(path))

    def _spatial_masks(self) -> np.ndarray:
        """The N masks of a gaussian/drop/window ``mask`` (N² float32), refused above the
        budget."""
        _, h, w = self.artifact.feature_shape
        size = 4 * (h * w) ** 2
        if size > self.memory_budget:
            raise MemoryError(
                f"{self.mask} masks of a {h}x{w} feature map take {size / 2**20:.4g} MiB "
                f"((h*w)^2 float32), above the memory budget of "
                f"{self.memory_budget / 2**20:g} MiB; raise it or use the onehot mask")
        return spatial_masks(h, w, kind=self.mask, sigma=self.mask_sigma,
                             strength=self.mask_strength)

    def _path(self, role: str) -> Path:
        return self.backend.graph_file(self.artifact, role)

    @property
    def labels(self) -> list[str] | None:
        return self.artifact.labels

    @property
    def affine_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(W, b) of ``g_pooled`` when it is one affine layer (the fastest path), else None."""
        return self._affine

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """Run ``f`` on preprocessed inputs (B, 3, H, W) → (B, C, h, w), or tokens (B, T, D)."""
        return self._graph("f")(inputs)

    def _row_bytes(self) -> int:
        """Bytes one masked row costs ``g``: a pooled vector, a masked map, or for tokens a
        masked sequence (:data:`TOKEN_SEQUENCE_FLOATS` per token) or a class-token row."""
        c, h, w = self.artifact.feature_shape
        tokens = self._tokens
        if tokens is None:
            return 4 * (c if self.uses_pooled_tail else c * h * w)
        if tokens.tail == "sequences":
            return 4 * TOKEN_SEQUENCE_FLOATS * tokens.count * tokens.width
        return 4 * TOKEN_SEQUENCE_FLOATS * (tokens.count + tokens.width)

    def rows_per_call(self) -> int:
        """How many masked maps (pooled vectors, masked sequences) one ``g`` call may take
        within the budget."""
        row_bytes = self._row_bytes()
        if row_bytes > self.memory_budget:
            c, h, w = self.artifact.feature_shape
            what = f"map of {row_bytes / 2**20:.3g} MiB ({c}x{h}x{w} float32)" \
                if self._tokens is None else \
                f"sequence of {self._tokens.count} tokens ({row_bytes / 2**20:.3g} MiB)"
            raise MemoryError(
                f"memory budget of {self.memory_budget / 2**20:g} MiB cannot hold one masked "
                f"{what}; raise it")
        return self.memory_budget // row_bytes

    def _token_scores(self, batch: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(unmasked (classes,), masked (N, classes)) per image of a token artifact: ``f``,
        then the tail on the all-ones row and the N mask rows, as many rows a call as the
        memory budget holds."""
        tail = self._graph("g")
        rows = self._mask_rows
        chunk = self.rows_per_call()
        for tokens in self.features(batch):
            scores = np.concatenate([tail(tokens[None], rows[start : start + chunk])[0]
                                     for start in range(0, len(rows), chunk)])
            yield scores[0], scores[1:]

    def masked_scores(self, feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of ``g`` on the unmasked map and on all N masked maps of one (C, h, w) feature.

        Returns (num_classes,) and (N, num_classes). With a pooled tail the unmasked row is
        its own call, exactly as on the affine fast path, so both give the same scores.
        """
        c, h, w = feature.shape
        n = h * w
        chunk = self.rows_per_call()
        tail = self._graph(self._tail_role)
        outputs = []
        if self.uses_pooled_tail:
            outputs.append(tail(self._pooled_mean(feature)))
            rows = self._pooled_rows(feature)
            for start in range(0, n, chunk):
                outputs.append(tail(rows[start : start + chunk]))
        else:
            for start in range(0, n + 1, chunk):
                stop = min(n + 1, start + chunk)
                first = max(0, start - 1)
                parts = [self._masked_maps(feature, first, stop - 1)]
                if start == 0:
                    parts.insert(0, feature[None])
                outputs.append(tail(np.concatenate(parts) if len(parts) > 1 else parts[0]))
        scores = np.concatenate(outputs)
        return scores[0], scores[1:]

    def _pooled_rows(self, feature: np.ndarray) -> np.ndarray:
        """(N, C): the exact global average of every masked map, for this object's mask kind."""
        if self._masks is None:
            return pooled_masked(feature)
        return weighted_pooled_masked(feature, self._masks)

    def _masked_maps(self, feature: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Masked maps ``start..stop`` of ``feature`` for this object's mask kind."""
        if self._masks is None:
            return masked_batch(feature, start, stop)
        return weighted_masked_batch(feature, self._masks, start, stop)

    @staticmethod
    def _pooled_mean(feature: np.ndarray) -> np.ndarray:
        """(1, C) global average of a (C, h, w) map: what ``g_pooled`` gets for the unmasked map.

        einsum, not BLAS: no BLAS thread pool wakes up to compete with the engine's threads.
        """
        c, h, w = feature.shape
        return np.einsum("cn->c", feature.reshape(c, h * w))[None] / np.float32(h * w)

    def maps(self, masked: np.ndarray) -> np.ndarray:
        """(N, K) masked scores of K classes → (K, N) maps in [0, 1] (Eq. 6).

        For a removing mask a low score marks a salient position, so the scores are negated.
        """
        return self.scoring.maps(masked)

    def check_targets(self, targets: Targets, top_k: int) -> Targets:
        """The targets to explain, checked and de-duplicated (:func:`targets.checked_targets`:
        ValueError, one line, for classes out of range or more than ``max_targets``).

        Every entry point (API, CLI, server, dataset) calls this with the user's options.
        """
        return checked_targets(targets, top_k, self.artifact.num_classes, self.max_targets)

    def resolve_targets(self, unmasked: np.ndarray, targets: Targets, top_k: int) -> np.ndarray:
        """Class indices to explain for one image (options checked by :meth:`check_targets`)."""
        return resolve_targets(unmasked, targets, top_k)

    @property
    def min_decode_size(self) -> MinSize | None:
        """What :func:`.read_image` / :func:`.decode_image` take as ``min_size`` for this
        explainer: JPEGs shrink on load (``decode="reduced"``), or None (``decode="exact"``:
        always decoded in full)."""
        return self.preprocessing.min_decode_size if self.decode == "reduced" else None

    def load(self, image: ImageLike) -> tuple[np.ndarray, str]:
        """An image path or array as (RGB uint8 array, display name)."""
        return load_image(image, self.max_pixels, self.min_decode_size)

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        targets: Targets = None,
        top_k: int = 1,
        names: Sequence[str] | None = None,
    ) -> Explanation:
        """Explain one image or a list: ``targets`` None (top_k predicted), an int, ints, 'all'
        (duplicates explained once)."""
        targets = self.check_targets(targets, top_k)
        rgbs, names = load_images(images, self.max_pixels, self.min_decode_size, names)
        results = []
        for start in range(0, len(rgbs), self.batch_size):
            batch = np.concatenate([self.preprocessing(rgb)
                                    for rgb in rgbs[start : start + self.batch_size]])
            results.extend(self._explain_batch(batch, targets, top_k, names[start:]))
        return self._explanation(results, names, rgbs,
                                 [self.preprocessing.crop_box(*image_size(rgb)) for rgb in rgbs])

    def explain_isolating(
        self,
        images: Sequence[np.ndarray],
        targets: Targets,
        top_k: int,
        names: Sequence[str],
        errors: tuple[type[Exception], ...] = (FloatingPointError, BackendError, RuntimeError),
    ) -> Iterator[tuple[list[int], Explanation | Exception]]:
        """Explain ``images`` as one batch; when the batch raises one of ``errors``, each image
        alone, so that one bad image (NaN scores, an engine error) costs only itself.

        Yields (indices into ``images``, their Explanation) for each group explained, and
        ([index], the exception) for each image that failed on its own.
        """
        groups = [list(range(len(images)))] if len(images) else []
        while groups:
            group = groups.pop(0)
            try:
                exp = self.explain([images[i] for i in group], targets, top_k,
                                   names=[names[i] for i in group])
            except errors as exc:
                if len(group) > 1:
                    groups[:0] = [[i] for i in group]
                else:
                    yield group, exc
                continue
            yield group, exp

    def explain_tensor(self, inputs: np.ndarray, targets: Targets = None,
                       top_k: int = 1) -> Explanation:
        """Explain inputs already preprocessed the deployment's own way.

        ``inputs``: float32 shaped as the model input (B, 3, H, W), or (B, H, W, 3) when the
        manifest's layout is NHWC; one input may omit B. The result has maps and scores but
        no images, so overlays are unavailable.
        """
        targets = self.check_targets(targets, top_k)
        x = np.asarray(inputs, dtype=np.float32)
        expected = tuple(self.artifact.manifest["input"]["shape"][1:])
        if x.ndim == len(expected):
            x = x[None]
        if x.ndim != len(expected) + 1 or x.shape[1:] != expected or len(x) == 0:
            layout = self.preprocessing.layout
            raise ValueError(f"inputs must be shaped (B, {', '.join(map(str, expected))}) "
                             f"({layout}, as the manifest says), got {tuple(x.shape)}")
        names = [f"input{i}" for i in range(len(x))]
        results = []
        for start in range(0, len(x), self.batch_size):
            results.extend(self._explain_batch(
                np.ascontiguousarray(x[start : start + self.batch_size]), targets, top_k,
                names[start:]))
        return self._explanation(results, names, None, None)

    def _explain_batch(self, batch: np.ndarray, targets: Targets, top_k: int,
                       names: Sequence[str]) -> list[Result]:
        """One :data:`Result` per image of a preprocessed batch, NaN/Inf refused by name; the
        first map a reduced precision flattened is warned about, once per explainer."""
        results = list(self.path_for(targets, top_k)(batch, targets, top_k))
        for name, (unmasked, classes, maps) in zip(names, results, strict=False):
            if not (np.isfinite(unmasked).all() and np.isfinite(maps).all()):
                raise FloatingPointError(f"{name}: the model produced NaN or Inf scores")
            if not self._precision_warned:
                self._precision_warned = warn_if_coarse(name, classes, maps, self._precision)
        return results

    def _explanation(self, results: list[Result], names: list[str],
                     images: list[np.ndarray] | None,
                     boxes: list[tuple[float, float, float, float]] | None) -> Explanation:
        _, h, w = self.artifact.feature_shape
        return Explanation(
            saliency=np.stack([maps.reshape(len(maps), h, w) for _, _, maps in results]),
            targets=np.stack([classes for _, classes, _ in results]),
            scores=np.stack([scores for scores, _, _ in results]).astype(np.float32),
            images=images,
            boxes=boxes,
            names=names,
            labels=self.labels,
        )
