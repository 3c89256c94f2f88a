"""Check the exported graphs reproduce their source before the artifact is kept.

Two different images go through ``f`` and ``g`` as one batch and are compared with the
source run on each image alone, and ``g`` scores a batch of masked maps compared with one
map at a time: the runtime batches images through ``f`` and masked maps through ``g``, so a
graph that mixes the items of a batch (a whole-batch normalisation, a reshape fixed at
batch 1) is refused. ``f``'s feature map is compared too where the source shows it, and a
model whose scores ignore the image is refused: it has nothing to explain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reciprocam_ir.backends import Backend, create_backend
from reciprocam_ir.masking import masked_batch, spatial_masks
from reciprocam_ir.messages import first_line

from ..errors import ExportError

TOLERANCE = 1e-4
"""Largest accepted max|g(f(x)) − model(x)| relative to max|model(x)| (and likewise for f)."""
SAME_SCORES = 1e-6
"""Scores for two different images closer than this (relative) mean the image is ignored."""
MASKED_MAPS = 3
"""Masked maps (positions 0..2 of the first image) in the batched ``g`` check."""
F_PER_IMAGE = "f_per_image"
"""The check's mark of an ``f`` that fails on a batch of images but reproduces each alone."""
CHECK_INPUT = ("seeded standard normal (numpy default_rng(0)), and a default_rng(1) image "
               "with it in a batch of 2")


def verification_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The fixed input of the export-time check: seeded standard normal."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def verification_images(shape: tuple[int, ...]) -> np.ndarray:
    """Two different inputs as one batch: the seed-0 input of ``shape``, then a seed-1 one."""
    one = (1, *shape[1:])
    return np.concatenate([verification_input(one, 0), verification_input(one, 1)])


@dataclass(frozen=True)
class Reference:
    """What the exported graphs must reproduce, from the source run one image (map) at a time.

    ``masked_scores`` None: the exported ``g`` itself, one map at a time (a graph file has
    no other ``g``). ``feature`` None: the source's map at the cut is not known.
    """

    images: np.ndarray
    scores: np.ndarray
    masked: np.ndarray
    masked_scores: np.ndarray | None = None
    feature: np.ndarray | None = None


def one_at_a_time(run: Callable[[np.ndarray], Any], batch: np.ndarray) -> np.ndarray:
    """``run`` on each item of ``batch`` alone, stacked: the reference for a batched run."""
    return np.concatenate([np.asarray(run(batch[i:i + 1]), np.float32)
                           for i in range(len(batch))])


def first_masked_maps(feature: np.ndarray) -> np.ndarray:
    """The masked maps the batched ``g`` check uses: positions 0..2 of one (1, C, h, w) map."""
    return masked_batch(feature[0], 0, MASKED_MAPS)


def check_mask_rows(grid: tuple[int, int]) -> np.ndarray:
    """The mask rows the token tail check uses: the authors' 3×3 Gaussian at positions
    0..2 of the ``grid`` (the corner, cut at the border, and its neighbours), (3, N)."""
    h, w = grid
    return np.ascontiguousarray(spatial_masks(h, w, "gaussian")[:MASKED_MAPS].reshape(-1, h * w))


def check_input_dependence(scores: np.ndarray, what: str) -> None:
    """Refuse a model whose scores are the same for two different images."""
    scale = max(float(np.abs(scores).max()), 1e-12)
    diff = float(np.abs(scores[0] - scores[1]).max())
    if diff <= SAME_SCORES * scale:
        raise ExportError(
            f"{what}: the model's scores are the same for two different inputs (max difference "
            f"{diff:.1e}): its output ignores the image, so there is nothing to explain "
            "(random or broken weights? features that vanish?)")


def _error(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        return float("inf")
    return float(np.abs(got - want).max())


@dataclass(frozen=True)
class _Tail:
    """How the check runs ``g``: ``scores`` its scores (and ``g_pooled``'s) of f's maps or
    tokens, ``masked`` its scores of masked maps (mask rows, with the first image's tokens),
    ``shapes`` what a batch may vary in, ``needs`` the axes the runtime needs free."""

    scores: Callable[[np.ndarray], list[np.ndarray]]
    masked: Callable[[np.ndarray, np.ndarray], np.ndarray]
    shapes: str
    needs: str


def _map_tail(compiled: dict[str, Any], ref: Reference) -> _Tail:
    g, pooled = compiled["g"], compiled.get("g_pooled")

    def scores(features: np.ndarray) -> list[np.ndarray]:
        if pooled is None:
            return [g(features)]
        return [g(features), pooled(features.reshape(*features.shape[:2], -1).mean(axis=2))]

    return _Tail(scores, lambda first, maps: g(maps), "2 images", "a free batch axis")


def _token_tail(compiled: dict[str, Any], ref: Reference) -> _Tail:
    g = compiled["g"]
    ones = np.ones((1, ref.masked.shape[1]), np.float32)
    return _Tail(lambda tokens: [g(tokens, ones)[:, 0]], lambda first, rows: g(first, rows)[0],
                 f"2 images or of {len(ref.masked)} masks", "free batch and mask axes")


def check_engine(backend: str, device: str | None = "CPU") -> Backend:
    """The engine the export's checks run on: f32, every graph as exported (a check runs each
    shape once or twice, so static copies would only add compiles)."""
    engine = create_backend(backend, device, "f32")
    engine.static_shapes = 0
    return engine


def check_graphs(backend: str, graphs: dict[str, Path], ref: Reference, what: str,
                 tokens: bool = False) -> dict[str, float]:
    """Max abs errors of the exported graphs against ``ref`` on ``backend`` in f32.

    ``scores``: g(f(x)) (and ``g_pooled``) on one image; ``batch``: the same on a batch of the
    two images, and ``g`` on a batch of ``ref.masked`` against ``ref.masked_scores`` (None:
    ``g`` one at a time); ``feature`` and ``feature_batch``: f against the source's map, on
    one image and on the batch. A token artifact's (``tokens``) ``g`` takes (tokens, mask
    rows): its scores are those of the all-ones row, its masked scores those of
    ``ref.masked`` rows on the first image's tokens.
    """
    try:
        engine = check_engine(backend)
        compiled = {role: engine.compile(path) for role, path in graphs.items()}
        f = compiled["f"]
        tail = (_token_tail if tokens else _map_tail)(compiled, ref)
        first = f(ref.images[:1])
        errors = {"scores": max(_error(s, ref.scores[:1]) for s in tail.scores(first))}
    except Exception as exc:  # ORT, OpenVINO and backend errors: a graph that cannot run
        raise ExportError(f"{what}: the exported graphs do not run on {backend} "
                          f"({first_line(exc)})") from None
    try:
        try:
            features = f(ref.images)
        except Exception:  # a shape fixed at batch 1 in f, not made free: f image by image
            f = engine.compile(graphs["f"])  # OpenVINO's CPU graph is unusable after the error
            features = np.concatenate([f(image[None]) for image in ref.images])
            errors[F_PER_IMAGE] = 1.0
        masked_scores = ref.masked_scores if ref.masked_scores is not None else np.concatenate(
            [tail.masked(first, one[None]) for one in ref.masked])
        batch = [_error(s, ref.scores) for s in tail.scores(features)]
        batch.append(_error(tail.masked(first, ref.masked), masked_scores))
    except Exception as exc:  # e.g. a reshape fixed at batch 1
        raise ExportError(f"{what}: the exported graphs fail on a batch of {tail.shapes} on "
                          f"{backend} ({first_line(exc)}); the runtime needs {tail.needs}"
                          ) from None
    errors["batch"] = max(batch)
    if ref.feature is not None:
        errors["feature"] = _error(first, ref.feature[:1])
        errors["feature_batch"] = _error(features, ref.feature)
    return errors


def _refusal(errors: dict[str, float], scale: float, f_scale: float, backend: str,
             layer: str) -> str | None:
    """What is wrong with one backend's errors (relative to the reference's scale), if any."""
    if errors.get("feature", 0.0) / f_scale > TOLERANCE:
        return (f"the exported f does not reproduce the model's feature map at '{layer}' on "
                f"{backend}: max |f(x) - F(x)| = {errors['feature']:.3g} "
                f"({errors['feature'] / f_scale:.2e} relative, tolerance {TOLERANCE:g})")
    if not errors["scores"] / scale <= TOLERANCE:
        return (f"the exported graphs do not reproduce the model on {backend}: max "
                f"|g(f(x)) - model(x)| = {errors['scores']:.3g} "
                f"({errors['scores'] / scale:.2e} relative, tolerance {TOLERANCE:g})")
    if not (errors["batch"] / scale <= TOLERANCE
            and errors.get("feature_batch", 0.0) / f_scale <= TOLERANCE):
        off = f"scores off by up to {errors['batch']:.3g}"
        if "feature_batch" in errors:
            off += f", f's map by {errors['feature_batch']:.3g}"
        return (f"an image's scores change with the other images of its batch on {backend} "
                f"({off}; a whole-batch operation or a shape fixed at batch 1?); the runtime "
                "batches images and masked maps")
    return None


def judge(results: dict[str, dict[str, float]], ref: Reference, what: str,
          log: Callable[[str], None], layer: str) -> dict[str, Any]:
    """Refuse the export above :data:`TOLERANCE`; else the manifest's ``check`` numbers.

    ``results``: per backend, the errors :func:`check_graphs` measured; ``what`` names the
    model in messages, ``layer`` the cut.
    """
    scale = max(float(np.abs(ref.scores).max()), 1e-12)
    f_scale = max(float(np.abs(ref.feature).max()), 1e-12) if ref.feature is not None else 1.0
    per_backend = {b: max(e["scores"], e["batch"]) for b, e in results.items()}
    log("check: max |g(f(x)) - model(x)| = "
        + ", ".join(f"{k} {v:.2e}" for k, v in per_backend.items()))
    for backend, errors in results.items():
        problem = _refusal(errors, scale, f_scale, backend, layer)
        if problem is not None:
            raise ExportError(f"{what}: {problem}")
    per_image = [b for b, e in results.items() if e.get(F_PER_IMAGE)]
    if per_image:
        log(f"f fails on a batch of images on {', '.join(per_image)} (a shape fixed at batch 1 "
            "that cannot be made free): the runtime runs f one image at a time")
    worst = max(per_backend.values())
    check = {"input": CHECK_INPUT, "max_abs_error": worst, "per_backend": per_backend,
             "relative_error": worst / scale, "tolerance": TOLERANCE}
    features = [max(e["feature"], e["feature_batch"]) for e in results.values()
                if "feature" in e]
    if features:
        check["feature_max_abs_error"] = max(features)
    if per_image:
        check[F_PER_IMAGE] = True
    return check


def input_batch_entry(check: dict[str, Any]) -> dict[str, int]:
    """The manifest ``input`` entries :func:`judge`'s check calls for, taking its mark out:
    ``images_per_call: 1`` where ``f`` runs on one image at a time."""
    return {"images_per_call": 1} if check.pop(F_PER_IMAGE, False) else {}
