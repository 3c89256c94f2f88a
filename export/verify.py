"""Check the exported graphs reproduce the PyTorch model before the artifact is kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reciprocam_ir.backends import create_backend
from reciprocam_ir.masking import masked_batch

from .errors import ExportError

TOLERANCE = 1e-4
"""Largest accepted max|g(f(x)) − model(x)| relative to max|model(x)|."""


def verification_input(shape: tuple[int, ...]) -> np.ndarray:
    """The fixed input of the export-time check: seeded standard normal."""
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def check_graphs(backend: str, graphs: dict[str, Path], x: np.ndarray, reference: np.ndarray,
                 masked_reference: np.ndarray) -> float:
    """Max abs error of ``g(f(x))`` (and ``g_pooled``) against the reference, in f32.

    Also runs ``g`` on a batch of masked maps, so the dynamic batch axis is exercised.
    """
    engine = create_backend(backend, "CPU", "f32")
    f = engine.compile(graphs["f"])
    feature = f(x)
    errors = []
    if "g" in graphs:
        g = engine.compile(graphs["g"])
        errors.append(np.abs(g(feature) - reference).max())
        masked = masked_batch(feature[0], 0, 3)
        errors.append(np.abs(g(masked) - masked_reference).max())
    if "g_pooled" in graphs:
        g_pooled = engine.compile(graphs["g_pooled"])
        pooled = feature.reshape(feature.shape[0], feature.shape[1], -1).mean(axis=2)
        errors.append(np.abs(g_pooled(pooled) - reference).max())
    return float(max(errors))


def judge(errors: dict[str, float], reference: np.ndarray, what: str,
          log: Callable[[str], None]) -> dict[str, Any]:
    """Refuse the export above :data:`TOLERANCE`; else the manifest's ``check`` numbers."""
    scale = max(float(np.abs(reference).max()), 1e-12)
    worst = max(errors.values())
    log("check: max |g(f(x)) - model(x)| = "
        + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    if not worst / scale <= TOLERANCE:
        raise ExportError(
            f"{what} do not reproduce the model: max |g(f(x)) - model(x)| = {worst:.3g} "
            f"({worst / scale:.2e} relative, tolerance {TOLERANCE:g})")
    return {"max_abs_error": worst, "per_backend": errors, "relative_error": worst / scale,
            "tolerance": TOLERANCE}
