"""Per-box evaluation of detector maps on the synthetic set, whose objects' boxes and pixel
masks are known (scripts/detector_data.py).

For each kept box that matches a ground-truth object (same class, IoU >= 0.5): the pointing
game (the map's maximum inside the object's box / mask) and the energy-based pointing game
(the map's mass inside it); on the first ``--curve-images`` images, deletion and insertion of
the box's own score (D-RISE's similarity: best IoU with the box x class score, over the
model's predictions on the perturbed image). Methods on the same graph and boxes: ReciproCAM
(grid x mask x box score), D-RISE (black box, numpy: ``--drise-masks`` masks of a 16x16 grid
with p = 0.5, as its paper) and the class-probability map (one pass: the head's score map of
the box's class, the per-class map that cannot tell two boxes of one class apart). Time per
box: an image's explanation time / its kept boxes. The model-randomisation check: Spearman
correlation of each box's map with the map of the same box after g's weights are redrawn.

    python scripts/evaluate_detector.py ARTIFACT DATA_DIR [--images 60] [--drise-masks 2000]
        [--drise-images 12] [--curve-images 12] [--backend onnxruntime] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reciprocam_ir.artifact import write_manifest  # noqa: E402
from reciprocam_ir.detection import box_iou, decode, xywh_to_xyxy  # noqa: E402
from reciprocam_ir.detection_cam import DetectionCAM  # noqa: E402
from reciprocam_ir.metrics import (  # noqa: E402
    auc,
    box_region,
    energy_in,
    perturbation_curve,
    points_into,
)
from reciprocam_ir.preprocess import read_image  # noqa: E402
from reciprocam_ir.saliency import normalise  # noqa: E402

CONF, IOU = 0.25, 0.7
RECIPROCAM = {  # name: (grid level, mask, box score)
    "reciprocam 16x16 onehot anchor": (1, "onehot", "anchor"),
    "reciprocam 16x16 onehot drise": (1, "onehot", "drise"),
    "reciprocam 16x16 window anchor": (1, "window", "anchor"),
    "reciprocam 8x8 onehot anchor": (2, "onehot", "anchor"),
    "reciprocam 8x8 onehot drise": (2, "onehot", "drise"),
    "reciprocam 8x8 window anchor": (2, "window", "anchor"),
}

CURVES = ["d-rise", "class probability", "reciprocam 16x16 onehot anchor",
          "reciprocam 16x16 onehot drise", "reciprocam 8x8 onehot anchor"]


def similarity(raw: np.ndarray, box: np.ndarray, cls: int) -> np.ndarray:
    """D-RISE's score of each output (B, 4 + classes, A) for a box: best IoU x class score."""
    boxes = xywh_to_xyxy(raw[:, :4].transpose(0, 2, 1))
    iou = box_iou(box, boxes.reshape(-1, 4)).reshape(boxes.shape[:2])
    return (iou * raw[:, 4 + cls]).max(axis=1)


def drise_masks(n: int, size: tuple[int, int], rng: np.random.Generator, cells: int = 16,
                p: float = 0.5) -> np.ndarray:
    """RISE's masks: a cells x cells binary grid kept with probability p, upsampled
    bilinearly and randomly shifted by up to one cell (N, H, W) float32."""
    h, w = size
    ch, cw = int(np.ceil(h / cells)), int(np.ceil(w / cells))
    grids = (rng.random((n, cells, cells)) < p).astype(np.float32)
    out = np.empty((n, h, w), np.float32)
    for i in range(n):
        up = cv2.resize(grids[i], ((cells + 1) * cw, (cells + 1) * ch),
                        interpolation=cv2.INTER_LINEAR)
        dy, dx = rng.integers(0, ch), rng.integers(0, cw)
        out[i] = up[dy : dy + h, dx : dx + w]
    return out


def drise(cam: DetectionCAM, x: np.ndarray, boxes: np.ndarray, classes: np.ndarray,
          n: int, rng: np.random.Generator, batch: int = 32) -> np.ndarray:
    """D-RISE maps (K, H, W) of the kept boxes: the masks weighted by each masked image's
    similarity to the box."""
    masks = drise_masks(n, x.shape[2:], rng)
    weights = np.zeros((n, len(boxes)), np.float32)
    for start in range(0, n, batch):
        m = masks[start : start + batch]
        raw = cam.predict(np.ascontiguousarray(x * m[:, None]))
        for k, (box, c) in enumerate(zip(boxes, classes, strict=True)):
            weights[start : start + batch, k] = similarity(raw, box, int(c))
    maps = np.einsum("nk,nhw->khw", weights, masks) / n
    return normalise(maps.reshape(len(boxes), -1).T).reshape(maps.shape)


def class_probability(raw: np.ndarray, classes: np.ndarray,
                      levels: list[tuple[int, int]]) -> np.ndarray:
    """The class-probability map of each box's class: the head's class score at every anchor,
    each level brought to the finest grid, the maximum over levels (K, h0, w0)."""
    h0, w0 = levels[0]
    out = []
    for c in classes:
        scores, start, stack = raw[4 + int(c)], 0, []
        for h, w in levels:
            level = scores[start : start + h * w].reshape(h, w)
            stack.append(np.repeat(np.repeat(level, h0 // h, 0), w0 // w, 1))
            start += h * w
        out.append(np.max(stack, axis=0))
    maps = np.asarray(out, np.float32)
    return normalise(maps.reshape(len(maps), -1).T).reshape(maps.shape) if len(maps) else maps


def up(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map on its grid → the input's pixels (bilinear, as the overlays)."""
    return cv2.resize(saliency.astype(np.float32), (size[1], size[0]),
                      interpolation=cv2.INTER_LINEAR)


def matches(boxes: np.ndarray, classes: np.ndarray, gt_boxes: np.ndarray,
            gt_classes: np.ndarray) -> list[tuple[int, int]]:
    """(kept box, object) pairs: greedily, best box first, same class and IoU >= 0.5."""
    pairs, used = [], set()
    for k, (box, c) in enumerate(zip(boxes, classes, strict=True)):
        if not len(gt_boxes):
            break
        iou = box_iou(box, gt_boxes)
        iou[(gt_classes != c) | np.isin(np.arange(len(gt_boxes)), list(used))] = 0
        j = int(np.argmax(iou))
        if iou[j] >= 0.5:
            pairs.append((k, j))
            used.add(j)
    return pairs


def randomised(artifact: Path, folder: Path, seed: int = 0) -> Path:
    """A copy of the artifact whose g has every weight tensor redrawn (same mean and std)."""
    import onnx
    from onnx import numpy_helper

    out = folder / "randomised"
    shutil.copytree(artifact, out)
    rng = np.random.default_rng(seed)
    model = onnx.load(str(out / "g.onnx"))
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.ndim >= 2:
            init.CopyFrom(numpy_helper.from_array(
                rng.normal(w.mean(), w.std() + 1e-8, w.shape).astype(np.float32), init.name))
    onnx.save(model, str(out / "g.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["graphs"] = {role: {"onnx": f["onnx"]} for role, f in manifest["graphs"].items()}
    for name in list(out.iterdir()):
        if name.suffix in (".xml", ".bin"):
            name.unlink()
    manifest.pop("files", None)
    write_manifest(out, manifest)
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def table(summary: dict) -> str:
    """The summary as a Markdown table, one row per method."""
    keys = ["pointing box", "pointing mask", "energy box", "energy mask", "deletion",
            "insertion"]
    lines = ["| method | " + " | ".join(keys) + " | boxes | ms per box |",
             "|---" * (len(keys) + 3) + "|"]
    for name, row in summary["methods"].items():
        cells = [f"{row[k]:.3f}" if k in row else "" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {row['n']} | {summary['ms_per_box'][name]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("data", type=Path)
    p.add_argument("--images", type=int, default=60)
    p.add_argument("--drise-masks", type=int, default=2000)
    p.add_argument("--drise-images", type=int, default=12)
    p.add_argument("--curve-images", type=int, default=12)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--curves", nargs="+", default=CURVES, metavar="METHOD",
                   help="methods whose deletion/insertion curves are measured")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    cams = {name: DetectionCAM(a.artifact, backend=a.backend, grid=g, mask=m, box_score=s)
            for name, (g, m, s) in RECIPROCAM.items()}
    base = cams["reciprocam 16x16 onehot anchor"]
    levels = [lv[1:] for lv in base.levels]
    with tempfile.TemporaryDirectory() as tmp:
        random_cam = DetectionCAM(randomised(a.artifact, Path(tmp)), backend="onnxruntime",
                                  grid=1)
        stems = sorted(p.stem for p in (a.data / "masks" / "val").glob("*.npz"))[: a.images]
        rows: dict[str, dict[str, list[float]]] = {}
        seconds: dict[str, float] = {}
        explained: dict[str, int] = {}
        inference_times, tail_times = [], {}
        boxes_total, sanity = 0, []

        def record(method: str, key: str, value: float) -> None:
            rows.setdefault(method, {}).setdefault(key, []).append(value)

        for index, stem in enumerate(stems):
            rgb = read_image(a.data / "images" / "val" / f"{stem}.png")
            truth = np.load(a.data / "masks" / "val" / f"{stem}.npz")
            x = base.preprocessing(rgb)
            size = x.shape[2:]
            t = time.perf_counter()
            feats = base.features(x)
            raw = base.raw(feats)[0]
            inference_times.append(time.perf_counter() - t)
            kept = decode(raw, CONF, IOU)
            if not len(kept):
                continue
            boxes_total += len(kept)
            maps: dict[str, np.ndarray] = {}
            masked_cache: dict[tuple[int, str], tuple[np.ndarray, float]] = {}
            for name, cam in cams.items():
                key = (cam.grid, cam.mask)
                if key not in masked_cache:
                    t = time.perf_counter()
                    masked_cache[key] = (cam.masked_raw(feats), time.perf_counter() - t)
                    tail_times.setdefault(f"{cam.grid_shape[0]}x{cam.grid_shape[1]} "
                                          f"{cam.mask}", []).append(masked_cache[key][1])
                masked, tail = masked_cache[key]
                t = time.perf_counter()
                scores = cam.box_scores(masked, kept)
                maps[name] = normalise(scores).reshape(len(kept), *cam.grid_shape)
                seconds[name] = seconds.get(name, 0.0) + tail + time.perf_counter() - t
            t = time.perf_counter()
            maps["class probability"] = class_probability(raw, kept.classes, levels)
            seconds["class probability"] = seconds.get("class probability", 0.0) + \
                inference_times[-1] + time.perf_counter() - t
            if index < a.drise_images:
                t = time.perf_counter()
                maps["d-rise"] = drise(base, x, kept.boxes, kept.classes, a.drise_masks, rng)
                seconds["d-rise"] = seconds.get("d-rise", 0.0) + time.perf_counter() - t
            for name in maps:
                explained[name] = explained.get(name, 0) + len(kept)
            random_maps = random_cam.maps(random_cam.features(x), kept)
            for k in range(len(kept)):
                sanity.append(spearman(maps["reciprocam 16x16 onehot anchor"][k],
                                       random_maps[k]))
            pairs = matches(kept.boxes, kept.classes, truth["boxes"], truth["classes"])
            for name, m in maps.items():
                for k, j in pairs:
                    full = up(m[k], size)
                    box = box_region(truth["boxes"][j], size)
                    mask = truth["masks"][j]
                    record(name, "pointing box", points_into(full, box))
                    record(name, "pointing mask", points_into(full, mask))
                    record(name, "energy box", energy_in(full, box))
                    record(name, "energy mask", energy_in(full, mask))
                    if index < a.curve_images and name in a.curves:
                        box_k, c = kept.boxes[k], int(kept.classes[k])

                        def predict(batch: np.ndarray, box_k=box_k, c=c) -> np.ndarray:
                            return similarity(base.predict(batch), box_k, c)[:, None]

                        for mode in ("deletion", "insertion"):
                            f, v = perturbation_curve(predict, x[0], m[k], 0, mode, a.steps,
                                                      batch_size=a.steps + 1)
                            record(name, mode, auc(f, v))
            print(f"{index + 1}/{len(stems)} {stem}: {len(kept)} boxes, {len(pairs)} matched",
                  file=sys.stderr, flush=True)
    one = float(np.median(inference_times))
    summary = {
        "images": len(stems), "boxes": boxes_total, "backend": a.backend,
        "inference_ms": one * 1e3,
        "masked_tail_inference_equivalents": {k: float(np.median(v)) / one
                                              for k, v in tail_times.items()},
        "randomisation_spearman_mean": float(np.mean(sanity)) if sanity else None,
        "methods": {name: {**{k: float(np.mean(v)) for k, v in r.items()},
                           "n": len(r["pointing box"])} for name, r in rows.items()},
        "drise_masks": a.drise_masks,
        "ms_per_box": {name: 1e3 * s / explained[name] for name, s in seconds.items()},
    }
    print(json.dumps(summary, indent=2))
    print(table(summary))
    if a.json:
        a.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
