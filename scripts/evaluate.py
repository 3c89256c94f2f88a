"""Evaluate ReciproCAM against GradCAM, GradCAM++ and ScoreCAM on the pretrained EfficientNet-Lite0.

Every method explains the same post-activation layer (``_bn1``, wrapped with its ReLU6) of
the same model, for the class the model predicts, and every map is scored by the same code
(:mod:`reciprocam_ir.metrics`, with the model's softmax from OpenVINO f32 as ``predict``).

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
from reciprocam_ir.saliency import normalise, softmax  # noqa: E402
from reciprocam_ir.visualise import overlay, write_png  # noqa: E402
from sample_images import sample_images  # noqa: E402

LAYER = "_bn1"
SIZE = 224
PAIRS = [("chelsea", "coffee"), ("coffee", "rocket"), ("astronaut", "china"),
         ("rocket", "flower"), ("china", "chelsea"), ("flower", "astronaut")]
CORNERS = ("tl", "tr", "bl", "br", "tl", "tr")
RECIPROCAM = {  # method name -> (scores, mask)
    "ReciproCAM logits one-hot": ("logits", "onehot"),
    "ReciproCAM softmax one-hot": ("softmax", "onehot"),
    "ReciproCAM logits gaussian": ("logits", "gaussian"),
    "ReciproCAM softmax gaussian": ("softmax", "gaussian"),
}
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
    return [s for s in samples if s.name in ("chelsea", "chelsea+coffee")]


SCORECAM_SUBSET = ("chelsea", "coffee", "astronaut", "rocket", "chelsea+coffee", "coffee+rocket")


def scorecam_subset(samples: list[Sample]) -> list[Sample]:
    """The fixed ScoreCAM subset: 4 photos and 2 pairs (ScoreCAM takes minutes per map here)."""
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
            maps.append(normalise(masked[:, [int(t)]]).reshape(h, w))
        return np.stack(maps)

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
    from export.pipeline import export_artifact

    def maps_of(art: Path, torch_model) -> dict[str, np.ndarray]:
        out = {}
        for name in methods:
            if name in RECIPROCAM:
                scores, mask = RECIPROCAM[name]
                cam = ReciproCAM(art, backend="openvino", precision="f32", scores=scores, mask=mask)
                ex = reciprocam_explainer(cam)
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
        short = name.replace("ReciproCAM ", "RC ").replace("gaussian", "gauss")
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
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    import torch

    from export.pipeline import export_artifact
    from export.pretrained import efficientnet_lite0

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
    methods = args.methods or list(RECIPROCAM) + [m for m in GRADCAMS
                                                  if not (args.quick and m == "ScoreCAM")]
    steps = 10 if args.quick else args.steps
    inputs = np.stack([ov.preprocess(s.rgb) for s in samples])
    targets = ov.predict(inputs).argmax(axis=1)
    labels = ov.cam.labels
    print(f"{len(samples)} images, methods: {', '.join(methods)}", flush=True)

    results: dict[str, MethodResult] = {}
    for name in methods:
        if name in RECIPROCAM:
            scores, mask = RECIPROCAM[name]
            cam = ReciproCAM(artifact, backend="openvino", precision="f32", scores=scores,
                             mask=mask)
            explain = reciprocam_explainer(cam)
            # our maps on the tensor equal the public API's maps on the photo
            check = cam.explain(samples[0].rgb, targets=[int(targets[0])]).saliency[0, 0]
            assert np.allclose(check, explain(inputs[:1], targets[:1])[0], atol=1e-5)
            cam.explain(samples[0].rgb, targets=[int(targets[0])])  # warm-up

            def time_one(i: int, cam: ReciproCAM = cam) -> float:
                start = time.perf_counter()
                cam.explain(samples[i].rgb, targets=[int(targets[i])])
                return time.perf_counter() - start

            chosen = samples
        else:
            timings: list[float] = []
            explain = gradcam_explainer(name, model, cache if name == "ScoreCAM" else None,
                                        timings, args.layer)
            chosen = scorecam_subset(samples) if name == "ScoreCAM" else samples
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

    rows_all = {n: r.row() for n, r in results.items() if len(r.names) == len(samples)}
    subset_names = results["ScoreCAM"].names if "ScoreCAM" in results else None
    rows_subset = {n: r.restrict(subset_names).row()
                   for n, r in results.items()} if subset_names else {}

    sanity: dict[str, dict[str, float]] = {}
    if not args.no_sanity:
        stages = SANITY_STAGES[:1] if args.quick else SANITY_STAGES
        sane = [i for i, s in enumerate(samples) if s.halves is None and "-" not in s.name]
        sanity = sanity_check(model, ov, inputs[sane], targets[sane], stages, args.work / "sanity",
                              [m for m in methods if m != "ScoreCAM"], args.layer)

    md = [f"EfficientNet-Lite0 (ImageNet), layer `{args.layer}`, {len(samples)} images, "
          f"predicted class; deletion/insertion with {steps} steps.", "", markdown_table(rows_all)]
    if rows_subset:
        md += ["", f"ScoreCAM subset ({len(subset_names or [])} images: "
               f"{', '.join(subset_names or [])}), all methods:", "", markdown_table(rows_subset)]
    (args.out / "results.md").write_text("\n".join(md) + "\n")
    sanity_md = ["| Randomised down to | " + " | ".join(next(iter(sanity.values()), {})) + " |"]
    sanity_md.append("|" + "---|" * (len(next(iter(sanity.values()), {})) + 1))
    for stage, vals in sanity.items():
        sanity_md.append(f"| {stage} | " + " | ".join(f"{v:+.3f}" for v in vals.values()) + " |")
    (args.out / "sanity.md").write_text("\n".join(sanity_md) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"all": rows_all, "scorecam_subset": rows_subset, "sanity": sanity,
         "images": [s.name for s in samples], "targets": targets.tolist()}, indent=1))
    with open(args.out / "per_image.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "image", "target", "average_drop", "increase", "coherency",
                         "complexity", "adcc", "insertion", "deletion"])
        for n, r in results.items():
            for i, s in enumerate(r.names):
                writer.writerow([n, s, int(targets[samples.index(next(
                    x for x in samples if x.name == s))])] + [
                    f"{getattr(r.adcc, k)[i]:.6f}" for k in
                    ("average_drop", "increase", "coherency", "complexity", "adcc")] + [
                    f"{r.insertion[i]:.6f}", f"{r.deletion[i]:.6f}"])
    shown = scorecam_subset(samples) if not args.quick else samples
    figure(shown, results, args.out / "figure.png", ov, labels,
           targets[[samples.index(s) for s in shown]])
    print("\n".join(md))
    if sanity:
        print("\nSanity (mean Spearman ρ, trained vs cascading randomised):")
        print("\n".join(sanity_md))
    print(f"\nwrote {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
