"""ReciproCAM for detectors: one map per kept box, from one pass of ``f`` and one batched
pass of ``g`` over spatially masked copies of the cut's feature levels.

The cut of a YOLO detector is several feature maps at once (the backbone's outputs that
feed the neck, strides 8, 16 and 32). Copy n of them keeps grid cell n of a common grid
(all channels, every level: a finer level keeps the cell's block, a coarser one the cell's
share of its cell) and zeroes the rest. ``g`` (the neck and head) runs on the N copies; the
score of copy n for a box is the box's own anchor's class score (``anchor``), or D-RISE's
similarity: the best IoU with the box × the box's class score over all of the copy's
predictions (``drise``). Each box's N scores, min-max normalised, are its map.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .artifact import Artifact
from .backends import Backend, Graph, create_backend
from .detection import (
    DEFAULT_CONF,
    DEFAULT_IOU,
    MAX_DET,
    Detections,
    box_iou,
    check_thresholds,
    to_image,
    xywh_to_xyxy,
)
from .detection import decode as decode_raw
from .detection_explanation import DetectionExplanation
from .masking import MASK_KINDS, check_sigma, check_strength, default_sigma, spatial_masks
from .preprocess import DEFAULT_MAX_PIXELS, ImageLike, load_image, load_images
from .saliency import normalise
from .targets import DEFAULT_MAX_TARGETS

BOX_SCORES = ("anchor", "drise")
"""How a masked copy is scored for a box (module docstring)."""
DEFAULT_BOX_SCORE = "drise"
"""Twice the energy inside the box at the same pointing game as ``anchor`` (docs/detection.md)."""
DETECT_MASKS = ("onehot", "window")
DEFAULT_DETECT_MASK = "onehot"



def level_masks(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Grid masks (N, gh, gw) on a level of ``shape`` (h, w): each grid cell's block where the
    level is finer (h = k·gh), the cell's mean over each level cell where it is coarser."""
    n, gh, gw = masks.shape
    h, w = shape
    if (h, w) == (gh, gw):
        return masks
    if h % gh == 0 and w % gw == 0:
        return np.repeat(np.repeat(masks, h // gh, axis=1), w // gw, axis=2)
    if gh % h == 0 and gw % w == 0:
        return masks.reshape(n, h, gh // h, w, gw // w).mean(axis=(2, 4))
    raise ValueError(f"level {h}x{w} does not nest with the {gh}x{gw} grid")


CLASSIFIER_DEFAULTS: dict[str, tuple] = {
    "explain_graph": (True, False), "decode": ("exact",), "max_targets": (DEFAULT_MAX_TARGETS,)}
"""ReciproCAM's options at their defaults (as the CLI passes them): no meaning for a detector."""


class DetectionCAM:
    """Explains the boxes a detection artifact's model keeps; see the module docstring.

    ``grid``: the level whose grid the masks use (index into the levels, finest first;
    default the manifest's). ``mask``: ``onehot`` (one cell) or ``window`` (a soft window,
    ``mask_sigma`` cells wide, renormalised at ``mask_strength``). ``box_score``: one of
    :data:`BOX_SCORES`.
    """

    def __init__(
        self,
        artifact: str | Path | Artifact,
        backend: str | Backend | None = None,
        device: str | None = None,
        precision: str = "auto",
        mask: str | None = None,
        mask_sigma: float | None = None,
        mask_strength: float | None = None,
        box_score: str = DEFAULT_BOX_SCORE,
        grid: int | None = None,
        memory_budget_mb: float = 256.0,
        batch_size: int = 8,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_dir: str | Path | None = None,
        **unused: object,  # ReciproCAM's options: refused unless None (explain_graph: no graph)
    ) -> None:
        mask = mask or DEFAULT_DETECT_MASK
        if mask not in DETECT_MASKS:
            raise ValueError(f"mask must be one of {DETECT_MASKS} for a detector, got {mask!r}"
                             if mask in MASK_KINDS else f"mask must be one of {DETECT_MASKS}, "
                             f"got {mask!r}")
        if mask_sigma is not None:
            if mask != "window":
                raise ValueError("mask_sigma applies to the window mask, not to the onehot mask")
            check_sigma(mask_sigma)
        if mask_strength is not None:
            if mask != "window":
                raise ValueError("mask_strength applies to the window mask")
            check_strength(mask_strength)
        if box_score not in BOX_SCORES:
            raise ValueError(f"box_score must be one of {BOX_SCORES}, got {box_score!r}")
        given = {k: v for k, v in unused.items()
                 if v is not None and v not in CLASSIFIER_DEFAULTS.get(k, ())}
        if given:
            raise ValueError(f"{', '.join(sorted(given))} do not apply to a detector")
        self.artifact = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
        if self.artifact.task != "detect":
            raise ValueError(f"{self.artifact.folder}: not a detection artifact")
        self.backend = backend if isinstance(backend, Backend) else create_backend(
            backend, device, precision, cache_dir)
        for role in ("f", "g"):
            self.backend.graph_file(self.artifact, role)  # refused now when absent
        feature = self.artifact.manifest["feature"]
        self.levels = [tuple(level["shape"]) for level in feature["levels"]]
        self.grid = feature["grid"] if grid is None else grid
        if not (isinstance(self.grid, int) and 0 <= self.grid < len(self.levels)):
            raise ValueError(f"grid must be a level index in 0..{len(self.levels) - 1}, "
                             f"got {grid!r}")
        self.mask = mask
        self.mask_sigma = None if mask == "onehot" else (
            default_sigma(mask) if mask_sigma is None else float(mask_sigma))
        self.mask_strength = None if mask == "onehot" else mask_strength
        self.box_score = box_score
        _, gh, gw = self.levels[self.grid]
        self.grid_shape = (gh, gw)
        masks = spatial_masks(gh, gw, kind=mask, sigma=self.mask_sigma,
                              strength=mask_strength) if mask != "onehot" else \
            np.eye(gh * gw, dtype=np.float32).reshape(gh * gw, gh, gw)
        self.masks = [level_masks(masks, (h, w)).astype(np.float32) for _, h, w in self.levels]
        row_bytes = 4 * sum(c * h * w for c, h, w in self.levels)
        self.rows_per_call = max(1, min(gh * gw, int(memory_budget_mb * 2**20) // row_bytes))
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.preprocessing = self.artifact.preprocessing
        self._graphs: dict[str, Graph] = {}
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str] | None:
        return self.artifact.labels

    def _graph(self, role: str) -> Graph:
        with self._lock:
            if role not in self._graphs:
                path = self.backend.graph_file(self.artifact, role)
                self._graphs[role] = self.backend.compile(path, self.artifact.graph_digest(path))
            return self._graphs[role]

    def features(self, inputs: np.ndarray) -> list[np.ndarray]:
        """``f`` on preprocessed inputs (B, 3, H, W): the feature levels, finest first."""
        return self._graph("f").outputs(inputs)

    def raw(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """``g`` on feature levels (B, C_l, h_l, w_l): the raw output (B, 4 + classes, A)."""
        return np.asarray(self._graph("g").outputs(*features)[0], np.float32)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """The model's raw output on preprocessed inputs (``f`` then ``g``)."""
        return self.raw(self.features(inputs))

    def masked_raw(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """The raw outputs (N, 4 + classes, A) of the N masked copies of one image's levels
        (each (1, C_l, h_l, w_l))."""
        n = len(self.masks[0])
        outputs = []
        for start in range(0, n, self.rows_per_call):
            stop = min(n, start + self.rows_per_call)
            batch = [feature * masks[start:stop, None] for feature, masks
                     in zip(features, self.masks, strict=True)]
            outputs.append(self.raw(batch))
        return np.concatenate(outputs)

    def box_scores(self, masked: np.ndarray, detections: Detections) -> np.ndarray:
        """(N, K) score of each masked copy for each kept box."""
        if self.box_score == "anchor":
            return masked[:, 4 + detections.classes, detections.anchors]
        boxes = xywh_to_xyxy(masked[:, :4].transpose(0, 2, 1))  # (N, A, 4)
        out = np.empty((len(masked), len(detections)), np.float32)
        for k, (box, c) in enumerate(zip(detections.boxes, detections.classes, strict=True)):
            iou = box_iou(box, boxes.reshape(-1, 4)).reshape(boxes.shape[:2])
            out[:, k] = (iou * masked[:, 4 + c]).max(axis=1)
        return out

    def maps(self, features: Sequence[np.ndarray], detections: Detections) -> np.ndarray:
        """(K, gh, gw) maps in [0, 1] of one image's kept boxes."""
        if not len(detections):
            return np.zeros((0, *self.grid_shape), np.float32)
        scores = self.box_scores(self.masked_raw(features), detections)
        return normalise(scores).reshape(len(detections), *self.grid_shape)

    def load(self, image: ImageLike) -> tuple[np.ndarray, str]:
        """An image path or array as (RGB uint8 array, display name)."""
        return load_image(image, self.max_pixels)

    def explain(self, images: ImageLike | Sequence[ImageLike], conf: float = DEFAULT_CONF,
                iou: float = DEFAULT_IOU, max_det: int = MAX_DET,
                names: Sequence[str] | None = None) -> DetectionExplanation:
        """Detect as Ultralytics' predict does (``conf``, ``iou``, ``max_det``) and explain
        every kept box of one image or a list."""
        check_thresholds(conf, iou)
        rgbs, names = load_images(images, self.max_pixels, names=names)
        boxes, classes, scores, saliency = [], [], [], []
        for name, rgb in zip(names, rgbs, strict=True):
            features = self.features(self.preprocessing(rgb))
            raw = self.raw(features)[0]
            if not np.isfinite(raw).all():
                raise FloatingPointError(f"{name}: the model produced NaN or Inf scores")
            detections = decode_raw(raw, conf, iou, max_det)
            boxes.append(to_image(detections.boxes, self.preprocessing.size, rgb.shape[:2]))
            classes.append(detections.classes)
            scores.append(detections.scores.astype(np.float32))
            saliency.append(self.maps(features, detections))
        return DetectionExplanation(
            saliency=saliency, targets=classes, scores=scores, boxes=boxes, images=rgbs,
            regions=[self.preprocessing.crop_box(*rgb.shape[:2]) for rgb in rgbs],
            names=names, labels=self.labels)
