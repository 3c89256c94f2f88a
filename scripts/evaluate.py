"""Evaluate ReciproCAM against GradCAM, GradCAM++ and ScoreCAM on the pretrained EfficientNet-Lite0.

Every method explains the same post-activation layer (``_bn1``, wrapped with its ReLU6) of
the same model, for the class the model predicts, and every map is scored by the same code
(:mod:`reciprocam_ir.metrics`, with the model's softmax from OpenVINO f32 as ``predict``).

Beyond the paper: variants of the runtime (:data:`RECIPROCAM`) and numpy candidates on
f's output and the affine head (:data:`CANDIDATES`) are chosen among on a fixed selection
half of the images (:func:`in_selection_half`, rule in :func:`select`) and reported on the
other half and on the whole set.

    python scripts/evaluate.py --out /tmp/eval/out            # full run (ScoreCAM on a subset)
    python scripts/evaluate.py --quick --out /tmp/eval/quick  # a few images, no ScoreCAM

Writes ``results.md`` (tables), ``results.json``, ``per_image.csv``, ``sanity.md`` and
``figure.png`` (image × method overlays) into ``--out``. ScoreCAM maps are cached in
``--cache`` (keyed by the input tensor's bytes and the class) because each takes minutes.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from reciprocam_ir import ReciproCAM  # noqa: E402
from reciprocam_ir import metrics as M  # noqa: E402
from reciprocam_ir.masking import spatial_masks  # noqa: E402
from reciprocam_ir.saliency import softmax  # noqa: E402
from reciprocam_ir.visualise import overlay, write_png  # noqa: E402
from sample_images import sample_images  # noqa: E402

LAYER = "_bn1"
SIZE = 224
PAIRS = [("chelsea", "coffee"), ("coffee", "rocket"), ("astronaut", "china"),
         ("rocket", "flower"), ("china", "chelsea"), ("flower", "astronaut")]
CORNERS = ("tl", "tr", "bl", "br", "tl", "tr")
PAPER = "ReciproCAM logits one-hot"
RECIPROCAM: dict[str, dict] = {  # method name -> ReciproCAM options (variants of the runtime)
    PAPER: dict(scores="logits", mask="onehot"),
    "ReciproCAM softmax one-hot": dict(scores="softmax", mask="onehot"),
    "ReciproCAM logits gaussian": dict(scores="logits", mask="gaussian"),
    "ReciproCAM softmax gaussian": dict(scores="softmax", mask="gaussian"),
    "ReciproCAM softmax gaussian σ1.5": dict(scores="softmax", mask="gaussian", mask_sigma=1.5),
    "ReciproCAM logits drop σ1.5": dict(scores="logits", mask="drop", mask_sigma=1.5),
    "ReciproCAM softmax drop σ0.85": dict(scores="softmax", mask="drop", mask_sigma=0.85),
    "ReciproCAM softmax drop σ1": dict(scores="softmax", mask="drop", mask_sigma=1.0),
    "ReciproCAM softmax drop σ1.5": dict(scores="softmax", mask="drop", mask_sigma=1.5),
    "ReciproCAM softmax drop σ2": dict(scores="softmax", mask="drop", mask_sigma=2.0),
    "ReciproCAM logits window σ0.85": dict(scores="logits", mask="window"),
    "ReciproCAM softmax window σ0.85 s2": dict(mask="window", mask_strength=2.0),
    "ReciproCAM softmax window σ0.85 s4": dict(mask="window"),
    "ReciproCAM softmax window σ1.5 s4": dict(mask="window", mask_sigma=1.5),
}
WINDOW = "ReciproCAM softmax window σ0.85 s4"
"""The runtime's ``mask="window"`` with its defaults (softmax scores, σ 0.85, strength 4)."""
GRADCAMS = ("GradCAM", "GradCAM++", "ScoreCAM")
SANITY_STAGES: list[tuple[str, list[str]]] = [  # cascading from the head; cumulative
    ("_fc", ["_fc"]),
    ("_conv_head+_bn1", ["_conv_head", "_bn1"]),
    ("_blocks.15", ["_blocks.15"]),
    ("_blocks.14", ["_blocks.14"]),
    ("_blocks.12-13", ["_blocks.12", "_blocks.13"]),
    ("_blocks.8-11", [f"_blocks.{i}" for i in range(8, 12)]),
    ("_blocks.0-7+stem", [f"_blocks.{i}" for i in range(8)] + ["_conv_stem", "_bn0"]),
]

Explain = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- images


@dataclass
class Sample:
    name: str
    rgb: np.ndarray
    halves: tuple[np.ndarray, np.ndarray] | None = None  # for side-by-side pairs


def _tall_crop(rgb: np.ndarray) -> np.ndarray:
    """Centre crop to aspect h:w = 2:1, resized to 224×112."""
    h, w = rgb.shape[:2]
    cw = min(w, h // 2)
    ch = 2 * cw
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(rgb[y0 : y0 + ch, x0 : x0 + cw], (SIZE // 2, SIZE),
                      interpolation=cv2.INTER_AREA)


def build_samples() -> list[Sample]:
    """The 6 bundled photos and 24 reproducible derivations (deterministic, no randomness).

    Per photo: a horizontal flip, a centre crop (70 % of each side) and a corner crop (75 %,
    corners in turn); plus 6 side-by-side pairs (two 2:1 centre crops, 224×224).
    """
    photos = sample_images()
    out = [Sample(name, rgb) for name, rgb in photos.items()]
    for name, rgb in photos.items():
        out.append(Sample(f"{name}-flip", np.ascontiguousarray(rgb[:, ::-1])))
    for name, rgb in photos.items():
        h, w = rgb.shape[:2]
        ch, cw = int(0.7 * h), int(0.7 * w)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        out.append(Sample(f"{name}-centre", np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw])))
    for (name, rgb), corner in zip(photos.items(), CORNERS, strict=True):
        h, w = rgb.shape[:2]
        ch, cw = int(0.75 * h), int(0.75 * w)
        y0 = 0 if corner[0] == "t" else h - ch
        x0 = 0 if corner[1] == "l" else w - cw
        crop = np.ascontiguousarray(rgb[y0 : y0 + ch, x0 : x0 + cw])
        out.append(Sample(f"{name}-{corner}", crop))
    for a, b in PAIRS:
        left, right = _tall_crop(photos[a]), _tall_crop(photos[b])
        out.append(Sample(f"{a}+{b}", np.concatenate([left, right], axis=1), (left, right)))
    return out


def quick_samples(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.name in ("chelsea", "rocket+flower")]


SELECTION_PHOTOS = ("chelsea", "coffee", "astronaut")
SELECTION_PAIRS = ("chelsea+coffee", "coffee+rocket", "astronaut+china")


def in_selection_half(name: str) -> bool:
    """The fixed split: 15 images that choose a method, 15 that report it.

    Split by source photo, so a photo's flips and crops never sit on both sides: the
    selection half is everything derived from chelsea, coffee and astronaut plus three
    pairs; the report half is rocket, china, flower and the other three pairs.
    """
    if "+" in name:
        return name in SELECTION_PAIRS
    return name.split("-")[0] in SELECTION_PHOTOS


SCORECAM_SUBSET = ("chelsea", "coffee", "astronaut", "chelsea+coffee", "coffee+rocket",
                   "astronaut+china",  # 6 of the selection half
                   "rocket", "china", "flower", "rocket+flower", "china+chelsea",
                   "flower+astronaut")  # 6 of the report half


def scorecam_subset(samples: list[Sample]) -> list[Sample]:
    """The fixed ScoreCAM subset: 6 images of each half (ScoreCAM takes minutes per map here)."""
    return [s for s in samples if s.name in SCORECAM_SUBSET]


# --------------------------------------------------------------------------- methods


class OVModel:
    """The exported model through OpenVINO f32: preprocessing, predict (softmax), features."""

    def __init__(self, artifact: Path) -> None:
        self.cam = ReciproCAM(artifact, backend="openvino", precision="f32")
        self.g = self.cam.backend.compile(self.cam.artifact.graph_path("g", "ir"))

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        return self.cam.preprocessing(rgb)[0]

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        out = [softmax(self.g(self.cam.features(inputs[i : i + 26])).astype(np.float64))
               for i in range(0, len(inputs), 26)]
        return np.concatenate(out)


def reciprocam_explainer(cam: ReciproCAM) -> Explain:
    """ReciproCAM of our runtime on normalised inputs: f, masked g, the same normalisation."""
    _, h, w = cam.artifact.feature_shape

    def explain(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        maps = []
        for x, t in zip(inputs, targets, strict=True):
            _, masked = cam.masked_scores(cam.features(x[None])[0])
            if cam.scores == "softmax":
                masked = softmax(masked)
            maps.append(cam.maps(masked[:, [int(t)]]).reshape(h, w))
        return np.stack(maps)

    return explain


# --------------------------------------------------------------- candidates beyond the runtime
#
# Maps computed here in numpy from f's output F (C, h, w) and the affine head (W, b) that
# follows the GAP (Lite0's ``g_pooled``): each is what g would give on some set of masked
# maps, so it costs no more network passes than ReciproCAM. None met the goal
# (docs/evaluation.md lists each with its numbers); they stay here so that the table can be
# re-made.

HeadMap = Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def keep_window(sigma: float | None, strength: float | None, factor: int = 1) -> HeadMap:
    """Keep a window around n, at a strength, and score it (numpy, on the affine head).

    The window is one position (``sigma`` None) or the runtime's ``mask="window"`` masks
    (:func:`~reciprocam_ir.masking.spatial_masks`: a Gaussian over the whole grid renormalised
    to sum 1); ``strength`` s scales the kept evidence to s/N of the whole map (s = 1 is
    ReciproCAM's one-hot GAP, s = N "as if it filled the map"); None scores logits, else the
    softmax over all classes. ``factor`` > 1 evaluates sub-positions: the class logits of
    bilinearly interpolated features (exact, because W is linear).
    """
    def fn(feature: np.ndarray, weight: np.ndarray, bias: np.ndarray, c: int) -> np.ndarray:
        k, (ch, h, w) = len(bias), feature.shape
        n = h * w
        z = weight @ feature.reshape(ch, n)  # (K, N): W·F_n
        if sigma is None:
            z = z * (1.0 if strength is None else strength)
        else:  # z_n = Σ_m M_n(m)·W·F_m with M_n = s·w_n, the runtime's masks
            z = z @ _window_masks(h, w, sigma, strength).T
        z = z.reshape(k, h, w)
        if factor > 1:
            rows, cols = M._interp_matrix(h, h * factor), M._interp_matrix(w, w * factor)
            z = np.einsum("ih,khw,jw->kij", rows, z, cols)
        if strength is None:
            return _minmax(z[c])
        return _minmax(softmax(z / n + bias[:, None, None], axis=0)[c])
    return fn


def _window_masks(h: int, w: int, sigma: float, strength: float | None) -> np.ndarray:
    """(N, N) float64: the runtime's ``window`` masks s·w_n as rows."""
    return spatial_masks(h, w, "window", sigma, strength).reshape(h * w, h * w).astype(
        np.float64)


def keep_minus_drop(sigma: float, strength: float) -> HeadMap:
    """Contrast: the class's softmax probability with the window around n kept (the runtime's
    ``mask='window'``) minus with it removed (as the runtime's ``mask='drop'``)."""
    def fn(feature: np.ndarray, weight: np.ndarray, bias: np.ndarray, c: int) -> np.ndarray:
        ch, h, w = feature.shape
        n = h * w
        z = weight @ feature.reshape(ch, n)  # (K, N): W·F_n
        window = 1.0 - spatial_masks(h, w, "drop", sigma).reshape(n, n).astype(np.float64)
        kept = z @ _window_masks(h, w, sigma, strength).T / n + bias[:, None]
        removed = (z.sum(axis=1) / n + bias)[:, None] - z @ window.T / n
        contrast = softmax(kept, axis=0)[c] - softmax(removed, axis=0)[c]
        return _minmax(contrast.reshape(h, w))
    return fn


def feature_scorecam(feature: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                     c: int) -> np.ndarray:
    """Score-CAM at the cut: channel k's min–max pattern masks F, g scores it (logit of c),
    softmax over channels weights the channels (as pytorch-grad-cam's ScoreCAM does)."""
    ch, h, w = feature.shape
    flat = feature.reshape(ch, h * w)
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    patterns = np.where(hi > lo, (flat - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    scores = patterns @ (weight[c] @ flat) / (h * w)
    return _minmax(np.maximum(softmax(scores) @ flat, 0.0).reshape(h, w))


def positive_cam(feature: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                 c: int) -> np.ndarray:
    """CAM with only the channels that vote for the class (max(W_c, 0))."""
    return _minmax(np.einsum("c,chw->hw", np.maximum(weight[c], 0.0), feature))


def powered(options: dict, power: float) -> HeadMap:
    """A runtime variant's map raised to ``power``: map shaping, the ranking is unchanged."""
    def fn(feature: np.ndarray, weight: np.ndarray, bias: np.ndarray, c: int) -> np.ndarray:
        ch, h, w = feature.shape
        masks = spatial_masks(h, w, options["mask"], options.get("mask_sigma"))
        rows = masks.reshape(h * w, h * w).astype(np.float64) @ feature.reshape(ch, -1).T
        scores = rows / (h * w) @ weight.T + bias
        if options["scores"] == "softmax":
            scores = softmax(scores)
        sign = -1.0 if options["mask"] == "drop" else 1.0
        return _minmax(sign * scores[:, c]).reshape(h, w) ** power
    return fn


SHAPING = "map shaping"  # a candidate whose ranking equals another's: may not be selected
CANDIDATES: dict[str, tuple[HeadMap, str]] = {
    "keep window σ1.5, logits": (keep_window(1.5, None), ""),
    "keep one-hot, softmax at strength 4": (keep_window(None, 4.0), ""),
    "keep one-hot, softmax at strength 16": (keep_window(None, 16.0), ""),
    "keep one-hot, softmax at strength N": (keep_window(None, 49.0), ""),
    "keep sub-position ×4, softmax at strength 16": (keep_window(None, 16.0, 4), ""),
    "keep minus drop σ1.5 (keep at strength 4), softmax": (keep_minus_drop(1.5, 4.0), ""),
    "Score-CAM at the cut (feature space)": (feature_scorecam, ""),
    "CAM of positive weights": (positive_cam, ""),
    "ReciproCAM softmax drop σ1.5, squared": (
        powered(RECIPROCAM["ReciproCAM softmax drop σ1.5"], 2.0), SHAPING),
}


def candidate_explainer(cam: ReciproCAM, fn: HeadMap) -> Explain:
    """A :data:`CANDIDATES` map on normalised inputs, from ``cam``'s f and affine head."""
    if cam.affine_head is None:
        raise ValueError(f"{cam.artifact.folder}: candidates need a GAP + affine head")
    weight, bias = (a.astype(np.float64) for a in cam.affine_head)

    def explain(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        features = cam.features(inputs).astype(np.float64)
        return np.stack([fn(f, weight, bias, int(t)) for f, t in zip(features, targets,
                                                                       strict=True)])

    return explain


def gradcam_explainer(kind: str, model, cache: Path | None = None,
                      timings: list[float] | None = None, layer_name: str = LAYER) -> Explain:
    """pytorch-grad-cam's ``kind`` on ``layer_name``; maps cached to ``cache`` when given."""
    import torch
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = {"GradCAM": GradCAM, "GradCAM++": GradCAMPlusPlus, "ScoreCAM": ScoreCAM}[kind]
    model = copy.deepcopy(model)  # grad-cam's hooks stay on this copy (they break torch.fx export)
    layer = dict(model.named_modules())[layer_name]
    prefix = kind if layer_name == LAYER else f"{kind}_{layer_name}"
    method = cls(model=model, target_layers=[layer])
    if kind == "ScoreCAM":
        method.batch_size = 64

    def one(x: np.ndarray, t: int) -> np.ndarray:
        key = hashlib.sha1(x.tobytes()).hexdigest()[:20] + f"_{t}"
        path = cache / f"{prefix}_{key}.npz" if cache else None
        if path is not None and path.exists():
            data = np.load(path)
            if timings is not None:
                timings.append(float(data["seconds"]))
            return data["map"]
        start = time.perf_counter()
        result = method(input_tensor=torch.from_numpy(x[None]),
                        targets=[ClassifierOutputTarget(int(t))])[0]
        seconds = time.perf_counter() - start
        if timings is not None:
            timings.append(seconds)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_suffix(".part.npz")
            np.savez(part, map=result.astype(np.float32), seconds=seconds)
            part.replace(path)
        return result.astype(np.float32)

    def explain(inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return np.stack([one(x, int(t)) for x, t in zip(inputs, targets, strict=True)])

    return explain


def our_explainer(name: str, plain: ReciproCAM) -> Explain:
    """The runtime variant or numpy candidate ``name`` on ``plain``'s artifact (OpenVINO, f32).

    ``plain`` (the default options, OpenVINO f32) serves every numpy candidate, so its graphs
    are compiled once, not once per candidate.
    """
    if name in RECIPROCAM:
        return reciprocam_explainer(ReciproCAM(plain.artifact, backend="openvino",
                                               precision="f32", **RECIPROCAM[name]))
    return candidate_explainer(plain, CANDIDATES[name][0])


# --------------------------------------------------------------------------- scoring


@dataclass
class MethodResult:
    names: list[str]
    maps: list[np.ndarray]
    adcc: M.ADCCResult
    insertion: np.ndarray
    deletion: np.ndarray
    ms: float
    pointing: list[bool] = field(default_factory=list)

    def restrict(self, names: list[str]) -> MethodResult:
        """The same results on the images ``names`` only (in that order)."""
        keep = [self.names.index(s) for s in names]
        adcc = M.ADCCResult(*(getattr(self.adcc, k)[keep] for k in
                              ("average_drop", "increase", "coherency", "complexity", "adcc")))
        pairs = [s for s in self.names if "+" in s]
        pointing = [p for s, p in zip(pairs, self.pointing, strict=True) if s in names]
        return MethodResult(list(names), [self.maps[i] for i in keep], adcc,
                            self.insertion[keep], self.deletion[keep], self.ms, pointing)

    def row(self) -> dict[str, float]:
        out = self.adcc.means()
        out.update(insertion=float(self.insertion.mean()), deletion=float(self.deletion.mean()),
                   ms=self.ms, n=len(self.names))
        out["pointing"] = float(np.mean(self.pointing)) if self.pointing else float("nan")
        return out


def pair_boxes(ov: OVModel, sample: Sample, target: int) -> list[tuple[float, float, float, float]]:
    """The half (as a box in input pixels) on which ``target`` scores higher when shown alone."""
    assert sample.halves is not None
    probs = ov.predict(np.stack([ov.preprocess(h) for h in sample.halves]))[:, target]
    half = int(np.argmax(probs))
    return [(0.0, half * SIZE / 2, float(SIZE), (half + 1) * SIZE / 2)]


def score_method(name: str, explain: Explain, ov: OVModel, samples: list[Sample],
                 inputs: np.ndarray, targets: np.ndarray, steps: int,
                 time_one: Callable[[int], float]) -> MethodResult:
    """All metrics of one method on ``samples``; ``time_one(i)`` gives seconds for image i."""
    maps = list(explain(inputs, targets))
    result = M.adcc_scores(ov.predict, inputs, maps, targets, explain)
    ins = np.array([M.insertion_auc(ov.predict, x, m, int(t), steps)
                    for x, m, t in zip(inputs, maps, targets, strict=True)])
    dele = np.array([M.deletion_auc(ov.predict, x, m, int(t), steps)
                     for x, m, t in zip(inputs, maps, targets, strict=True)])
    times = [time_one(i) for i in range(len(samples))]
    pointing = [M.pointing_game(m, pair_boxes(ov, s, int(t)), (SIZE, SIZE), tolerance=0.0)
                for s, m, t in zip(samples, maps, targets, strict=True) if s.halves is not None]
    print(f"  {name}: ADCC {result.adcc.mean():.4f}  ({len(samples)} images)", flush=True)
    return MethodResult([s.name for s in samples], maps, result, ins, dele,
                        1000 * float(np.median(times)), pointing)


# --------------------------------------------------------------------------- sanity check


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); 0 if one is constant."""
    def ranks(v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, np.float64).ravel()
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        uniq, inv = np.unique(v, return_inverse=True)
        sums = np.bincount(inv, weights=r)
        return (sums / np.bincount(inv))[inv]
    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def randomise(model, prefixes: list[str], seed: int) -> None:
    """Re-initialise (in place) every parameterised module under ``prefixes``, seeded."""
    import torch

    torch.manual_seed(seed)
    for name, module in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():  # random affine, so BN is not an identity
                    module.weight.normal_(1.0, 0.5)
                    module.bias.normal_(0.0, 0.5)


def sanity_check(model, ov: OVModel, inputs: np.ndarray, targets: np.ndarray,
                 stages: list[tuple[str, list[str]]], workdir: Path,
                 methods: list[str], layer: str = LAYER) -> dict[str, dict[str, float]]:
    """Mean Spearman ρ (maps upsampled to the input) between trained and randomised models.

    Cascading (Adebayo et al. 2018): stage k randomises stages 1..k, from the head down;
    the class explained stays the trained model's prediction. ReciproCAM runs through our
    runtime on a fresh export of each randomised model.
    """
    from export.torch.pipeline import export_artifact

    def maps_of(art: Path, torch_model) -> dict[str, np.ndarray]:
        out = {}
        plain = ReciproCAM(art, backend="openvino", precision="f32")
        for name in methods:
            if name in RECIPROCAM or name in CANDIDATES:
                ex = our_explainer(name, plain)
            else:
                ex = gradcam_explainer(name, torch_model, layer_name=layer)
            out[name] = np.stack([M.upsample(m, (SIZE, SIZE)) for m in ex(inputs, targets)])
        return out

    trained = maps_of(ov.cam.artifact.folder, model)
    randomised = copy.deepcopy(model)
    table: dict[str, dict[str, float]] = {}
    for k, (label, prefixes) in enumerate(stages):
        randomise(randomised, prefixes, seed=k)
        art = export_artifact(randomised, layer=layer, fmt="ir", out=workdir / f"stage{k}")
        now = maps_of(art, randomised)
        table[label] = {m: float(np.mean([spearman(a, b) for a, b in zip(trained[m], now[m],
                                                                         strict=True)]))
                        for m in methods}
        print(f"  sanity {label}: " + ", ".join(f"{m} {v:+.3f}" for m, v in table[label].items()),
              flush=True)
    return table


# --------------------------------------------------------------------------- output


COLUMNS = [("average_drop", "Avg Drop ↓", "{:.2%}"), ("increase", "Increase ↑", "{:.1%}"),
           ("coherency", "Coherency ↑", "{:.4f}"), ("complexity", "Complexity ↓", "{:.4f}"),
           ("adcc", "ADCC ↑", "{:.4f}"), ("adcc_of_means", "ADCC of means ↑", "{:.4f}"),
           ("insertion", "Insertion ↑", "{:.4f}"), ("deletion", "Deletion ↓", "{:.4f}"),
           ("pointing", "Pointing (pairs) ↑", "{:.2f}"), ("ms", "ms / explanation", "{:.1f}")]


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    head = "| Method | n | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, row in rows.items():
        cells = [fmt.format(row[key]) if np.isfinite(row[key]) else "–"
                 for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | {int(row['n'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(samples: list[Sample], results: dict[str, MethodResult], path: Path,
           ov: OVModel, labels: list[str] | None, targets: np.ndarray) -> Path:
    """Grid: one row per image (at the model's input size), the photo then each method."""
    tile = 160
    names = list(results)
    rows = []
    header = np.full((28, tile * (len(names) + 1), 3), 255, np.uint8)
    for j, name in enumerate(["image"] + names):
        short = (name.replace("ReciproCAM ", "RC ").replace("gaussian", "gauss")
                 .replace(" (keep at strength 4)", "").replace(", softmax", " softmax")
                 .replace("σ", "s"))[:26]  # OpenCV's font has no σ
        cv2.putText(header, short, (j * tile + 3, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                    (0, 0, 0), 1, cv2.LINE_AA)
    rows.append(header)
    for i, s in enumerate(samples):
        rgb = cv2.resize(s.rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        tiles = [rgb]
        for name in names:
            r = results[name]
            if s.name in r.names:
                m = r.maps[r.names.index(s.name)]
                tiles.append(overlay(rgb, M.upsample(m, (SIZE, SIZE)).astype(np.float32)))
            else:
                tiles.append(np.full_like(rgb, 230))
        row = np.concatenate([cv2.resize(t, (tile, tile)) for t in tiles], axis=1)
        label = f"{s.name}: {labels[targets[i]] if labels else targets[i]}"
        cv2.putText(row, label[:30], (3, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
                    (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
    return write_png(path, np.concatenate(rows, axis=0))


# --------------------------------------------------------------------------- selection


SANITY_LIMIT = 0.5
"""A method passes the sanity check when |mean Spearman ρ| < this at every stage."""


def scope_tables(results: dict[str, MethodResult], scope: list[str]
                 ) -> list[tuple[list[str], dict[str, dict[str, float]]]]:
    """(images, rows) tables of one scope: every method that covers it, then, for a method
    run on a subset of it (ScoreCAM), all methods on that subset."""
    full = {n: r.restrict(scope).row() for n, r in results.items() if set(scope) <= set(r.names)}
    tables = [(scope, full)]
    for name, r in results.items():
        common = [x for x in scope if x in r.names]
        if name not in full and common:
            tables.append((common, {n: res.restrict(common).row() for n, res in results.items()
                                    if set(common) <= set(res.names)}))
    return tables


def select(rows: dict[str, dict[str, float]], reference: str = "GradCAM") -> str:
    """The rule, applied to the selection half: the highest ADCC among our methods (no map
    shaping) whose insertion is ≥ and deletion ≤ ``reference``'s; the paper's if none."""
    ours = [n for n in rows if n in RECIPROCAM or (n in CANDIDATES and CANDIDATES[n][1] != SHAPING)]
    ref = rows.get(reference)
    ok = [n for n in ours if ref is None or (rows[n]["insertion"] >= ref["insertion"]
                                             and rows[n]["deletion"] <= ref["deletion"])]
    return max(ok, key=lambda n: rows[n]["adcc"]) if ok else PAPER


def verdict(name: str, tables: list[tuple[list[str], dict[str, dict[str, float]]]],
            sanity: dict[str, dict[str, float]]) -> list[str]:
    """How ``name`` compares with each peer on one scope, and on the sanity check."""
    lines = []
    for images, rows in tables:
        if name not in rows:
            continue
        me = rows[name]
        for peer in (PAPER, "GradCAM", "ScoreCAM"):
            if peer not in rows or peer == name:
                continue
            p = rows[peer]
            checks = [("ADCC", me["adcc"] > p["adcc"], me["adcc"], p["adcc"]),
                      ("insertion", me["insertion"] >= p["insertion"], me["insertion"],
                       p["insertion"]),
                      ("deletion", me["deletion"] <= p["deletion"], me["deletion"], p["deletion"])]
            text = ", ".join(f"{k} {a:.4f} vs {b:.4f} {'✓' if won else '✗'}"
                             for k, won, a, b in checks)
            lines.append(f"- vs {peer} on {len(images)} images: {text}")
    if sanity and name in next(iter(sanity.values())):
        worst = max(abs(v[name]) for v in sanity.values())
        lines.append(f"- sanity check: max |ρ| over stages {worst:.3f} "
                     f"{'✓ passes' if worst < SANITY_LIMIT else '✗ fails'} (limit {SANITY_LIMIT})")
    return lines


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("evaluation"))
    ap.add_argument("--artifact", type=Path, default=None,
                    help="exported EfficientNet-Lite0 folder (default: export into --work)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/reciprocam-eval"))
    ap.add_argument("--cache", type=Path, default=None, help="ScoreCAM cache (default WORK/cache)")
    ap.add_argument("--quick", action="store_true", help="2 images, no ScoreCAM, 1 sanity stage")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of method names")
    ap.add_argument("--steps", type=int, default=50, help="deletion/insertion steps")
    ap.add_argument("--no-sanity", action="store_true")
    ap.add_argument("--layer", default=LAYER, help="layer every method explains (default _bn1)")
    ap.add_argument("--images", nargs="*", default=None, help="only these sample names")
    ap.add_argument("--scorecam-all", action="store_true",
                    help=f"ScoreCAM on every image, not only the {len(SCORECAM_SUBSET)} of "
                         "SCORECAM_SUBSET (about a minute per map on 2 idle cores, 2 per image)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    import torch

    from export.pretrained import efficientnet_lite0
    from export.torch.pipeline import export_artifact

    torch.manual_seed(0)
    model = efficientnet_lite0()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.cache or args.work / "cache"
    artifact = args.artifact
    if artifact is None:
        artifact = args.work / ("lite0" if args.layer == LAYER else f"lite0-{args.layer}")
        if not (artifact / "manifest.json").exists():
            export_artifact(model, layer=args.layer, fmt="ir", out=artifact)
    ov = OVModel(artifact)

    samples = build_samples()
    if args.quick:
        samples = quick_samples(samples)
    if args.images:
        samples = [s for s in samples if s.name in args.images]
    quick_methods = [PAPER, WINDOW, "keep one-hot, softmax at strength 4", "GradCAM"]
    methods = args.methods or (quick_methods if args.quick else
                               list(RECIPROCAM) + list(CANDIDATES) + list(GRADCAMS))
    steps = 10 if args.quick else args.steps
    inputs = np.stack([ov.preprocess(s.rgb) for s in samples])
    targets = ov.predict(inputs).argmax(axis=1)
    labels = ov.cam.labels
    print(f"{len(samples)} images, methods: {', '.join(methods)}", flush=True)

    results: dict[str, MethodResult] = {}
    for name in methods:
        chosen = samples
        if name in RECIPROCAM:
            cam = ReciproCAM(artifact, backend="openvino", precision="f32", **RECIPROCAM[name])
            explain = reciprocam_explainer(cam)
            # our maps on the tensor equal the public API's maps on the photo
            check = cam.explain(samples[0].rgb, targets=[int(targets[0])]).saliency[0, 0]
            assert np.allclose(check, explain(inputs[:1], targets[:1])[0], atol=1e-5)
            cam.explain(samples[0].rgb, targets=[int(targets[0])])  # warm-up

            def time_one(i: int, cam: ReciproCAM = cam) -> float:
                start = time.perf_counter()
                cam.explain(samples[i].rgb, targets=[int(targets[i])])
                return time.perf_counter() - start
        elif name in CANDIDATES:
            explain = our_explainer(name, ov.cam)

            def time_one(i: int) -> float:
                return float("nan")  # numpy in this script, not the runtime: not timed
        else:
            timings: list[float] = []
            explain = gradcam_explainer(name, model, cache if name == "ScoreCAM" else None,
                                        timings, args.layer)
            if name == "ScoreCAM" and not args.scorecam_all:
                chosen = scorecam_subset(samples)
            explain(inputs[:1], targets[:1])  # warm-up (hooks, first call)
            timings.clear()

            def time_one(i: int, timings: list[float] = timings) -> float:
                return timings[i]

        idx = [samples.index(s) for s in chosen]
        results[name] = score_method(name, explain, ov, chosen, inputs[idx], targets[idx],
                                     steps, time_one)
        if name == "ScoreCAM":  # cached maps carry their time; time one fresh call instead
            fresh = gradcam_explainer(name, model, layer_name=args.layer)
            start = time.perf_counter()
            fresh(inputs[idx[:1]], targets[idx[:1]])
            results[name].ms = 1000 * (time.perf_counter() - start)
        (args.out / "partial.json").write_text(json.dumps(  # progress, in case a later step fails
            {n: r.row() for n, r in results.items()}, indent=1))

    names = [s.name for s in samples]
    scopes = {"selection half": [n for n in names if in_selection_half(n)],
              "report half": [n for n in names if not in_selection_half(n)],
              "whole set": names}
    tables = {scope: scope_tables(results, imgs) for scope, imgs in scopes.items() if imgs}
    selected = select(tables["selection half"][0][1]) if "selection half" in tables else PAPER

    sanity: dict[str, dict[str, float]] = {}
    if not args.no_sanity:
        stages = SANITY_STAGES[:1] if args.quick else SANITY_STAGES
        sane = [i for i, s in enumerate(samples) if s.halves is None and "-" not in s.name]
        sanity = sanity_check(model, ov, inputs[sane], targets[sane], stages, args.work / "sanity",
                              [m for m in methods if m != "ScoreCAM"], args.layer)

    md = [f"EfficientNet-Lite0 (ImageNet), layer `{args.layer}`, {len(samples)} images, "
          f"predicted class; deletion/insertion with {steps} steps. Selected on the selection "
          f"half (highest ADCC with insertion ≥ and deletion ≤ GradCAM's, no map shaping): "
          f"**{selected}**."]
    for scope, scope_tabs in tables.items():
        for k, (imgs, rows) in enumerate(scope_tabs):
            title = (f"{scope} ({len(imgs)} images)" if k == 0 else
                     f"{scope}, images with every method ({len(imgs)}: {', '.join(imgs)})")
            md += ["", f"### {title}", "", markdown_table(rows)]
        for name in dict.fromkeys([selected, WINDOW]):
            if name in results:
                md += ["", f"{name} on the {scope}:"] + verdict(name, scope_tabs, sanity)
    (args.out / "results.md").write_text("\n".join(md) + "\n")
    sanity_md = ["| Randomised down to | " + " | ".join(next(iter(sanity.values()), {})) + " |"]
    sanity_md.append("|" + "---|" * (len(next(iter(sanity.values()), {})) + 1))
    for stage, vals in sanity.items():
        sanity_md.append(f"| {stage} | " + " | ".join(f"{v:+.3f}" for v in vals.values()) + " |")
    (args.out / "sanity.md").write_text("\n".join(sanity_md) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"scopes": {scope: [{"images": imgs, "rows": rows} for imgs, rows in tabs]
                    for scope, tabs in tables.items()},
         "selected": selected, "sanity": sanity,
         "images": names, "targets": targets.tolist()}, indent=1))
    with open(args.out / "per_image.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "image", "half", "target", "average_drop", "increase",
                         "coherency", "complexity", "adcc", "insertion", "deletion"])
        for n, r in results.items():
            for i, s in enumerate(r.names):
                half = "selection" if in_selection_half(s) else "report"
                writer.writerow([n, s, half, int(targets[names.index(s)])] + [
                    f"{getattr(r.adcc, k)[i]:.6f}" for k in
                    ("average_drop", "increase", "coherency", "complexity", "adcc")] + [
                    f"{r.insertion[i]:.6f}", f"{r.deletion[i]:.6f}"])
    shown = scorecam_subset(samples) if not args.quick else samples
    in_figure = list(dict.fromkeys([PAPER, WINDOW, selected, "GradCAM", "GradCAM++", "ScoreCAM"]))
    figure(shown, {n: results[n] for n in in_figure if n in results}, args.out / "figure.png",
           ov, labels, targets[[samples.index(s) for s in shown]])
    print("\n".join(md))
    if sanity:
        print("\nSanity (mean Spearman ρ, trained vs cascading randomised):")
        print("\n".join(sanity_md))
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
