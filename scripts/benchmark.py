#!/usr/bin/env python
"""Benchmark ReciproCAM explanations against plain inference and the gradient-based peers.

Usage (from the repository root, after ``scripts/setup.sh``)::

    .venv/bin/python scripts/benchmark.py            # full table (ScoreCAM takes minutes)
    .venv/bin/python scripts/benchmark.py --quick    # smoke run: resnet18, both backends

What is measured, per model and backend (medians, batch 1, one 224×224-input image):

- ``predict ms``: plain inference of the *whole* model (the torch model exported to one
  ONNX graph by this script), compiled on the same backend, device and precision, plus
  the same preprocessing and the top-1 pick;
- ``explain ms``: ``ReciproCAM.explain`` on the same image (preprocessing included), top-1:
  the artifact's explain graph when it has one (``path``);
- ``explain graph / model inference``: the explain graph's inference alone against the
  whole model's inference alone, on the same preprocessed input (no Python around either);
  on OpenVINO both run as static copies for the batch they get (the backend's default);
- static shapes (OpenVINO): the explain graph and the whole model also compiled with their
  dynamic batch as exported (``OpenVINOBackend(static_shapes=0)``, what the runtime did
  before), all four pairings of explain graph ÷ model, and ``explain`` timed both ways;
- ``general path ratio``: ``ReciproCAM(..., explain_graph=False).explain`` over predict,
  the path taken for explicit classes and the other mask kinds (``general path``);
- ``drop ratio``: ``mask='drop', scores='softmax'`` (softmax over every class) over
  predict, for the last-layer rows;
- ``window ratio``: ``mask='window'`` (the renormalised window, softmax over every class)
  over predict, for the last-layer rows: through an explain graph built for the window
  (a copy of the artifact, ``--explain-mask window``), then through the general path;
- all are measured side by side, interleaved in one process, alternating order; every
  ratio is the median of the per-repeat ratios (both sides timed under the same load);
- ``peak RSS``: the peak resident memory of the process that loads the artifact and
  explains, measured before the whole model is loaded;
- time to first explanation: load (with sha256 checks) + compile + first call, in a
  fresh process, with an empty compile cache (OpenVINO ``CACHE_DIR``, ONNX Runtime
  optimised model; the first start fills it) and at a second start with it filled;
- 16-image throughput: ``explain`` of 16 images against plain inference of the same
  16, both in batches of ``--batch-size`` (8);
- a check that the fast path (GAP shortcut, fused into one graph where the backend can)
  gives the same maps as the slow path (``g`` on all N masked maps), in f32;
- vision transformers (``--models vit_b_16``): the artifact cut at the last block explains
  by the class-token shortcut; the same model is also exported with the masked-sequence tail
  (every masked copy through the last block, ViT-ReciproCAM done naively) and timed in a row
  of its own (``tail``: sequences), and the shortcut's maps are checked against it.
- an ONNX or OpenVINO IR file as a model (``--models deit_tiny.onnx`` or ``deit_tiny.xml``,
  for instance written by ``scripts/timm_onnx.py``; an IR file with ``--backend openvino``):
  the artifact is cut from the file (``reciprocam-export FILE``,
  ImageNet preprocessing), the file itself is the plain-inference baseline, and a ViT file
  whose last block takes the class-token shortcut also gets its masked-sequence row.

Peers (pytorch-grad-cam GradCAM, GradCAM++, ScoreCAM once; torchcam GradCAM) run on
torch CPU with a plain torch forward as their baseline, on the first model.

Exports go to a work folder under the system temp dir (``--work-dir``). Progress goes to
stderr, the table to stdout; ``--json FILE`` also writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ["resnet50", "resnet18", "mobilenet_v3_large", "efficientnet_b0",
                  "export.pretrained:efficientnet_lite0"]
BACKENDS = ["openvino", "onnxruntime"]
GRAPH_FILES = (".onnx", ".xml")
"""Model specs that are graph files: the file itself is the plain-inference baseline."""
DROP = {"scores": "softmax", "mask": "drop"}
"""A beyond-the-paper variant (docs/evaluation.md), timed beside the paper's."""
WINDOW = {"mask": "window"}
"""The renormalised window with its defaults (softmax scores; docs/evaluation.md)."""
PEER_METHODS = ["GradCAM", "GradCAM++", "torchcam GradCAM", "ScoreCAM"]


def log(message: str) -> None:
    """Progress line on stderr."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status (``ru_maxrss`` survives exec, so a worker
    started from a large parent would report the parent's size).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 2**20 if sys.platform == "darwin" else 2**10  # macOS reports bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def median_ms(samples: list[float]) -> float:
    return float(np.median(samples) * 1e3)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2
                ) -> dict[str, list[float]]:
    """Seconds of each function per repeat, run in turn within every repeat (order rotates).

    Samples of one repeat were taken under the same load, so a ratio is best read as the
    median of per-repeat ratios (:func:`paired_ratio`).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return samples


def paired_ratio(samples: dict[str, list[float]], top: str, bottom: str) -> float:
    """Median over repeats of ``top`` / ``bottom`` timed in the same repeat."""
    return float(np.median(np.asarray(samples[top]) / np.asarray(samples[bottom])))


def sample_image(seed: int = 0, size: tuple[int, int] = (256, 320)) -> np.ndarray:
    """A photo when scikit-image is installed (chelsea), else seeded noise; RGB uint8."""
    if seed == 0:
        try:
            from skimage import data

            return np.ascontiguousarray(data.chelsea())
        except ImportError:
            pass
    return (np.random.default_rng(seed).random((*size, 3)) * 255).astype(np.uint8)


# ---------------------------------------------------------------- worker (no torch) ---

def worker_main(task: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: 'bench' and 'first' without torch, 'peers' with it."""
    if task["kind"] == "peers":
        return {"peers": peer_rows(task["spec"], Path(task["work"]), task["repeats"],
                                   task["scorecam"])}
    t0 = time.perf_counter()
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends import create_backend

    import_s = time.perf_counter() - t0
    artifact, backend_name = task["artifact"], task["backend"]
    device, precision = task["device"], task["precision"]
    rgb = sample_image()
    if task["kind"] == "first":
        start = time.perf_counter()
        backend = create_backend(backend_name, device, precision, cache_dir=task["cache_dir"])
        cam = ReciproCAM(artifact, backend=backend)
        cam.explain(rgb)
        return {"import_s": import_s, "first_s": time.perf_counter() - start}

    backend = create_backend(backend_name, device, precision)
    cam = ReciproCAM(artifact, backend=backend, batch_size=task["batch_size"])
    general = ReciproCAM(artifact, backend=backend, explain_graph=False)
    result: dict[str, Any] = {"path": cam.path_for(None, 1).name,
                              "general_path": general.path.name,
                              "pooled": cam.uses_pooled_tail,
                              "feature": list(cam.artifact.feature_shape),
                              "layer": cam.artifact.manifest["target_layer"]}
    for _ in range(2):
        cam.explain(rgb)
    result["rss_mb"] = peak_rss_mb()
    whole = backend.compile(Path(task["whole"]))
    pre = cam.preprocessing
    x = pre(rgb)

    def predict() -> None:
        np.argsort(-whole(pre(rgb))[0])[:1]

    timed = {"predict": predict, "explain": lambda: cam.explain(rgb),
             "general": lambda: general.explain(rgb), "whole": lambda: whole(x)}
    if cam.graph_path is not None:
        timed["graph"] = lambda: cam.graph_path.run(x)
    if backend_name == "openvino":
        timed.update(dynamic_timings(artifact, Path(task["whole"]), device, precision, rgb, x))
    if task["throughput"]:  # the main rows, not the slow earlier-cut ones
        drop = ReciproCAM(artifact, backend=backend, **DROP)
        window = ReciproCAM(task["window_artifact"], backend=backend, **WINDOW)
        window_general = ReciproCAM(artifact, backend=backend, explain_graph=False, **WINDOW)
        result.update(window_path=window.path_for(None, 1).name,
                      window_general_path=window_general.path.name)
        timed.update(drop=lambda: drop.explain(rgb), window=lambda: window.explain(rgb),
                     window_general=lambda: window_general.explain(rgb))
    samples = interleaved(timed, task["repeats"])
    result.update({f"{name}_ms": median_ms(times) for name, times in samples.items()})
    result.update(ratio=paired_ratio(samples, "explain", "predict"),
                  general_ratio=paired_ratio(samples, "general", "predict"),
                  graph_ratio=paired_ratio(samples, "graph", "whole")
                  if "graph" in samples else None,
                  **{f"{name}_ratio": paired_ratio(samples, name, "predict")
                     if name in samples else None
                     for name in ("drop", "window", "window_general")})
    if "graph_dynamic" in samples and "graph" in samples:
        result["static"] = {
            "graph_static_model_static": paired_ratio(samples, "graph", "whole"),
            "graph_static_model_dynamic": paired_ratio(samples, "graph", "whole_dynamic"),
            "graph_dynamic_model_dynamic": paired_ratio(samples, "graph_dynamic",
                                                        "whole_dynamic"),
            "graph_dynamic_model_static": paired_ratio(samples, "graph_dynamic", "whole"),
            "explain_dynamic_over_static": paired_ratio(samples, "explain_dynamic", "explain"),
            "model_dynamic_over_static": paired_ratio(samples, "whole_dynamic", "whole")}
    if task["throughput"]:
        images = [sample_image(seed) for seed in range(1, 17)]

        def predict16() -> None:
            x = np.concatenate([pre(image) for image in images])
            for start in range(0, len(x), cam.batch_size):
                whole(x[start : start + cam.batch_size]).argmax(axis=1)

        samples = interleaved({"predict16": predict16, "explain16": lambda: cam.explain(images)},
                              max(3, task["repeats"] // 5), warmup=1)
        result.update({f"{name}_ms": median_ms(times) for name, times in samples.items()})
        result["throughput_ratio"] = paired_ratio(samples, "predict16", "explain16")
    if task["check"] and cam.artifact.tokens is not None:
        result.update(check_token_tail(artifact, task["naive"], backend_name, device, rgb))
    elif task["check"]:
        result.update(check_slow_path(artifact, backend_name, device, rgb, cam))
    result["rss_total_mb"] = peak_rss_mb()
    return result


def dynamic_timings(artifact: str, whole: Path, device: str, precision: str,
                    rgb: np.ndarray, x: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The whole model, the explain graph and ``explain`` with OpenVINO's graphs compiled as
    exported (dynamic batch, no static copies), to time beside the static default."""
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends.openvino_backend import OpenVINOBackend

    backend = OpenVINOBackend(device, precision, static_shapes=0)
    model = backend.compile(whole)
    cam = ReciproCAM(artifact, backend=backend)
    timed = {"whole_dynamic": lambda: model(x), "explain_dynamic": lambda: cam.explain(rgb)}
    if cam.graph_path is not None:
        timed["graph_dynamic"] = lambda: cam.graph_path.run(x)
    return timed


def check_slow_path(artifact: str, backend_name: str, device: str, rgb: np.ndarray,
                    measured: Any) -> dict[str, float]:
    """Max |map difference| of the fast path against the slow paths, all in f32.

    ``pooled``: ``g_pooled`` called separately on F[:, n] / N; ``full``: ``g`` on all N
    masked maps built in numpy (Eq. 5) — the paper's algorithm with no shortcut.
    ``precision``: the measured explainer (its precision, e.g. bf16) against f32.
    """
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends import create_backend
    from reciprocam_ir.masking import masked_batch
    from reciprocam_ir.saliency import normalise

    backend = create_backend(backend_name, device, "f32")
    cam = ReciproCAM(artifact, backend=backend)
    exp = cam.explain(rgb, top_k=5)
    c, h, w = cam.artifact.feature_shape
    (feature,) = cam.features(cam.preprocessing(rgb))
    classes = exp.targets[0]
    unmasked, masked = cam.masked_scores(feature)
    pooled = normalise(masked[:, classes]).reshape(-1, h, w)
    g_path = next(cam.artifact.graph_path("g", fmt) for fmt in backend.graph_format
                  if cam.artifact.graph_path("g", fmt) is not None)
    full_scores = backend.compile(g_path)(masked_batch(feature))
    full = normalise(full_scores[:, classes]).reshape(-1, h, w)
    other = measured.explain(rgb, targets=[int(k) for k in classes])
    scale = float(np.abs(exp.scores[0]).max())
    result = {"precision_map_diff": float(np.abs(other.saliency[0] - exp.saliency[0]).max()),
              "precision_score_rel": float(np.abs(other.scores[0] - exp.scores[0]).max()
                                           / scale),
              "map_diff_pooled": float(np.abs(exp.saliency[0] - pooled).max()),
              "map_diff_full": float(np.abs(exp.saliency[0] - full).max()),
              "score_diff": float(np.abs(exp.scores[0] - unmasked).max())}
    if cam.graph_path is not None:
        top_k = cam.graph_path.top_k
        graph = cam.explain(rgb, top_k=top_k).saliency[0]
        result["map_diff_graph"] = float(np.abs(graph - exp.saliency[0, :top_k]).max())
    return result


def check_token_tail(artifact: str, naive: str, backend_name: str, device: str,
                     rgb: np.ndarray) -> dict[str, float]:
    """Max |map difference| of a vision transformer's class-token shortcut (explain graph and
    general path) against the masked-sequence tail of the same model, top 5, f32."""
    from reciprocam_ir import ReciproCAM
    from reciprocam_ir.backends import create_backend

    backend = create_backend(backend_name, device, "f32")
    cam = ReciproCAM(artifact, backend=backend, explain_graph=False)
    exp = cam.explain(rgb, top_k=5)
    classes = [int(k) for k in exp.targets[0]]
    slow = ReciproCAM(naive, backend=backend, memory_budget_mb=4096).explain(rgb, targets=classes)
    result = {"map_diff_full": float(np.abs(exp.saliency - slow.saliency).max())}
    graph = ReciproCAM(artifact, backend=backend)
    if graph.graph_path is not None:
        top_k = graph.graph_path.top_k
        result["map_diff_graph"] = float(np.abs(graph.explain(rgb, top_k=top_k).saliency
                                                - exp.saliency[:, :top_k]).max())
    return result


def run_worker(task: dict[str, Any]) -> dict[str, Any]:
    """Run one worker task in a fresh interpreter and return its JSON result."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(task)],
                          stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {task['kind']} {task['backend']} failed "
                           f"(exit {proc.returncode}; its error is above)")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- parent (torch) ------

def export_model(spec: str, layer: str | None, work: Path, token_tail: str | None = None,
                 fmt: str = "both") -> tuple[Path, Path]:
    """Artifact folder and whole-model ONNX for ``spec`` (random weights for torchvision);
    ``token_tail`` 'sequences': a vision transformer with the masked-sequence tail; ``fmt``
    'onnx' where OpenVINO is not measured (and need not be installed)."""
    import torch

    from export.artifact.graph_files import write_onnx
    from export.torch.model_source import load_model
    from export.torch.pipeline import export_artifact

    if spec.lower().endswith(GRAPH_FILES):  # a graph file: the file itself is the baseline
        return export_file(spec, layer, work, token_tail, fmt), Path(spec)
    weights = None if ":" in spec else "none"
    name = spec.split(":")[-1] + (f"-{layer}" if layer else "") + \
        (f"-{token_tail}" if token_tail else "")
    artifact = work / name
    if not (artifact / "manifest.json").is_file():
        log(f"exporting {spec}{' at ' + layer if layer else ''} -> {artifact}")
        export_artifact(spec, weights=weights, layer=layer, fmt=fmt, out=artifact,
                        token_tail_kind=token_tail)
    whole = work / f"{spec.split(':')[-1]}-whole.onnx"
    if not whole.is_file():
        log(f"exporting the whole {spec} to {whole.name} (the plain-inference baseline)")
        loaded = load_model(spec, weights, None)
        write_onnx(loaded.model.eval(), torch.zeros(1, 3, *loaded.preprocessing.size), whole,
                   "input", "scores")
    return artifact, whole


def export_file(path: str, layer: str | None, work: Path, token_tail: str | None,
                fmt: str) -> Path:
    """The artifact of an ONNX or IR classifier file (ImageNet preprocessing assumed)."""
    from export.graphfile.pipeline import export_graph_file

    artifact = work / (Path(path).stem + (f"-{layer}" if layer else "")
                       + (f"-{token_tail}" if token_tail else ""))
    if not (artifact / "manifest.json").is_file():
        log(f"exporting {path}{' at ' + layer if layer else ''} -> {artifact}")
        export_graph_file(path, layer=layer, fmt=fmt, out=artifact, token_tail=token_tail)
    return artifact


def token_tail_of(artifact: Path) -> str | None:
    """The tail of a vision transformer's artifact ('class_token', 'sequences'), else None."""
    return json.loads((artifact / "manifest.json").read_text()).get("token_tail", {}).get("kind")


def window_artifact(artifact: Path) -> Path:
    """A copy of ``artifact`` whose explain graph computes the window map (as
    ``reciprocam-export --explain-mask window`` writes it), made once."""
    import shutil

    from export.artifact.explain_graph import add_explain_graphs
    from reciprocam_ir.artifact import Artifact

    out = artifact.with_name(artifact.name + "-window")
    if not (out / "manifest.json").is_file():
        log(f"building the window's explain graph -> {out.name}")
        part = artifact.with_name(out.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        shutil.copytree(artifact, part)
        add_explain_graphs(part, Artifact.load(part).manifest, 1, lambda m: None,
                           mask=WINDOW["mask"])
        part.rename(out)
    return out


def bench_row(spec: str, layer: str | None, backend: str, args: argparse.Namespace,
              work: Path, throughput: bool, first: bool, check: bool,
              repeats: int, token_tail: str | None = None) -> dict[str, Any]:
    formats = "both" if "openvino" in args.backend else "onnx"
    artifact, whole = export_model(spec, layer, work, token_tail, formats)
    precision = args.precision if backend == "openvino" else "auto"
    tail, naive = token_tail_of(artifact), None
    if check and tail == "class_token":
        naive = str(export_model(spec, layer, work, "sequences", formats)[0])
    task = {"kind": "bench", "artifact": str(artifact), "whole": str(whole),
            "window_artifact": str(window_artifact(artifact)) if throughput else None,
            "backend": backend, "device": args.device, "precision": precision,
            "repeats": repeats, "throughput": throughput, "check": check, "naive": naive,
            "batch_size": args.batch_size}
    log(f"{spec} {layer or ''} on {backend} {args.device}: interleaved predict/explain "
        f"x{repeats}")
    model = Path(spec).stem if spec.lower().endswith(GRAPH_FILES) else spec.split(":")[-1]
    row = {"model": model, "backend": backend, "device": args.device,
           "precision": precision, "batch_size": args.batch_size, "artifact": str(artifact),
           "tail": tail, **run_worker(task)}
    if first:
        cache = Path(tempfile.mkdtemp(prefix=f"cache-{row['model']}-{backend}-", dir=work))
        log(f"{spec} on {backend}: time to first explanation (empty cache, then filled)")
        base = {**task, "kind": "first", "cache_dir": str(cache)}
        row["first_s"] = run_worker(base)["first_s"]
        row["cached_first_s"] = run_worker(base)["first_s"]
    return row


def peer_rows(spec: str, work: Path, repeats: int, scorecam: bool) -> list[dict[str, Any]]:
    """pytorch-grad-cam and torchcam on torch CPU, interleaved with a plain torch forward."""
    import copy

    import torch
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import GradCAM as TorchCamGradCAM

    from export.torch.model_source import load_model
    from reciprocam_ir.artifact import Artifact

    artifact = Artifact.load(work / spec.split(":")[-1], verify_files=False)
    layer = artifact.manifest["target_layer"]
    loaded = load_model(spec, None if ":" in spec else "none", None)
    model = loaded.model.eval()
    x = torch.from_numpy(loaded.preprocessing(sample_image()))
    models = [copy.deepcopy(model) for _ in range(4)]
    target = [ClassifierOutputTarget(int(model(x).argmax()))]
    gradcam = GradCAM(models[0], [models[0].get_submodule(layer)])
    gradcampp = GradCAMPlusPlus(models[1], [models[1].get_submodule(layer)])
    torchcam = TorchCamGradCAM(models[2], target_layer=layer)

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def run_torchcam() -> None:
        out = models[2](x)
        torchcam(int(out.argmax()), out)

    log(f"peers on {spec} ({layer}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads: interleaved x{repeats}")
    samples = interleaved({"forward": forward, "GradCAM": lambda: gradcam(x, target),
                           "GradCAM++": lambda: gradcampp(x, target),
                           "torchcam GradCAM": run_torchcam}, repeats)
    times = {name: median_ms(values) for name, values in samples.items()}
    rows = [{"method": name, "model": spec, "layer": layer, "ms": times[name],
             "forward_ms": times["forward"]} for name in PEER_METHODS[:3]]
    torchcam.remove_hooks()
    if scorecam:
        log("ScoreCAM once (one forward per channel of the target layer: minutes)")
        score_cam = ScoreCAM(models[3], [models[3].get_submodule(layer)])
        start = time.perf_counter()
        score_cam(x, target)
        rows.append({"method": "ScoreCAM", "model": spec, "layer": layer,
                     "ms": (time.perf_counter() - start) * 1e3, "forward_ms": times["forward"]})
    for row in rows:
        row["rss_mb"] = peak_rss_mb()
    return rows


def fmt(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def tail_note(row: dict[str, Any]) -> str:
    """How a vision transformer's row scores its masked copies, after the model's name."""
    tail = row.get("tail")
    return "" if tail is None else f" ({tail.replace('_', ' ')} tail)"


def render(rows: list[dict[str, Any]], peers: list[dict[str, Any]], env: dict[str, Any]
           ) -> str:
    """The Markdown tables."""
    lines = [f"Machine: {env['machine']}; {env['engines']}; load average "
             f"{env['load_start']} at start, {env.get('load_end', '-')} at end; "
             f"{env.get('wall_s', 0):.0f} s", "",
             "| model | layer | N | backend | prec | path | predict ms | explain ms | ratio "
             "| explain graph / model inference | general path ratio | general path "
             "| drop ratio | window ratio (its explain graph, general path) | peak RSS MiB "
             "| first explain s | 2nd start s (cache) | max map diff | prec vs f32: map, score |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, h, w = r["feature"]
        diffs = [r[k] for k in ("map_diff_pooled", "map_diff_full", "map_diff_graph") if k in r]
        lines.append(
            f"| {r['model']}{tail_note(r)} | {r['layer']} | {h * w} | {r['backend']} "
            f"| {r['precision']} "
            f"| {r['path']} | {r['predict_ms']:.1f} | {r['explain_ms']:.1f} "
            f"| {r['ratio']:.3f} | {fmt(r['graph_ratio'], '.3f')} | {r['general_ratio']:.3f} "
            f"| {r['general_path']} | {fmt(r['drop_ratio'], '.3f')} "
            f"| {fmt(r.get('window_ratio'), '.3f')}, {fmt(r.get('window_general_ratio'), '.3f')} "
            f"| {r['rss_mb']:.0f} "
            f"| {fmt(r.get('first_s'), '.2f')} | {fmt(r.get('cached_first_s'), '.2f')} "
            f"| {fmt(max(diffs) if diffs else None, '.1e')} "
            f"| {fmt(r.get('precision_map_diff'), '.1e')}, "
            f"{fmt(r.get('precision_score_rel'), '.1e')} |")
    static = [r for r in rows if r.get("static")]
    if static:
        lines += ["", "Static shapes (OpenVINO, batch 1): explain graph ÷ plain model inference "
                  "with each compiled static (the runtime's default now) or with the dynamic "
                  "batch it was exported with; explain ms and the dynamic ÷ static ratios:", "",
                  "| model | graph static ÷ model static | graph static ÷ model dynamic "
                  "| graph dynamic ÷ model dynamic | graph dynamic ÷ model static "
                  "| explain ms static | explain ms dynamic | explain dynamic ÷ static "
                  "| model dynamic ÷ static |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in static:
            t = r["static"]
            lines.append(f"| {r['model']} | {t['graph_static_model_static']:.3f} "
                         f"| {t['graph_static_model_dynamic']:.3f} "
                         f"| {t['graph_dynamic_model_dynamic']:.3f} "
                         f"| {t['graph_dynamic_model_static']:.3f} | {r['explain_ms']:.2f} "
                         f"| {r['explain_dynamic_ms']:.2f} "
                         f"| {t['explain_dynamic_over_static']:.3f} "
                         f"| {t['model_dynamic_over_static']:.3f} |")
    with_tp = [r for r in rows if "explain16_ms" in r]
    if with_tp:
        lines += ["", f"16 images (explain top-1 vs plain inference in batches of "
                  f"{rows[0].get('batch_size', 8)}):", "",
                  "| model | backend | predict img/s | explain img/s | explain ms per image "
                  "| throughput ratio |",
                  "|---|---|---|---|---|---|"]
        for r in with_tp:
            p, e = 16e3 / r["predict16_ms"], 16e3 / r["explain16_ms"]
            lines.append(f"| {r['model']} | {r['backend']} | {p:.1f} | {e:.1f} "
                         f"| {r['explain16_ms'] / 16:.2f} | {r['throughput_ratio']:.3f} |")
    if peers:
        ours = {r["backend"]: r for r in rows
                if r["model"] == peers[0]["model"].split(":")[-1]
                and r["layer"] == peers[0]["layer"]}
        lines += ["", f"Peers on {peers[0]['model']} ({peers[0]['layer']}), torch CPU; "
                  "ratio = method / plain torch forward:", "",
                  "| method | ms | torch forward ms | ratio | process peak RSS MiB |",
                  "|---|---|---|---|---|"]
        for p in peers:
            lines.append(f"| {p['method']} | {p['ms']:.1f} | {p['forward_ms']:.1f} "
                         f"| {p['ms'] / p['forward_ms']:.2f} | {p['rss_mb']:.0f} |")
        for backend, r in ours.items():
            lines.append(f"| ReciproCAM ({backend}, from the table above) "
                         f"| {r['explain_ms']:.1f} | - | - | {r['rss_mb']:.0f} |")
    return "\n".join(lines)


def environment(device: str = "CPU") -> dict[str, Any]:
    import importlib
    import platform
    from importlib.metadata import version

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for name in ("openvino", "onnxruntime"):  # the module imported, whichever wheel holds it
        try:
            versions.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:  # noqa: BLE001 - a missing engine is simply not listed
            pass
    try:
        versions.append(f"torch {version('torch')}")
    except Exception:  # noqa: BLE001
        pass
    machine = f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"
    if device == "CUDA":
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=30).stdout.strip().replace("\n", "; ")
            machine += f"; GPU {gpu}"
        except (OSError, subprocess.SubprocessError):
            pass
    return {"machine": machine, "engines": ", ".join(versions), "load_start": load_average()}


def load_average() -> str:
    """The 1-minute load average (other work on the machine skews every timing)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "-"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: resnet18, 5 repeats, both backends, no peers")
    parser.add_argument("--models", nargs="+", default=None,
                        help=f"torchvision names or import paths (default: {DEFAULT_MODELS})")
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=None,
                        help="backends to measure (default: both; CUDA: onnxruntime)")
    parser.add_argument("--device", default="CPU", help="CPU, GPU, NPU, AUTO or CUDA")
    parser.add_argument("--precision", default="auto", choices=["auto", "f32", "bf16", "f16"],
                        help="OpenVINO inference precision (ONNX Runtime runs f32)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 30, --quick 5)")
    parser.add_argument("--no-peers", dest="peers", action="store_false",
                        help="skip pytorch-grad-cam / torchcam")
    parser.add_argument("--no-scorecam", dest="scorecam", action="store_false",
                        help="skip ScoreCAM (it takes minutes on ResNet-50)")
    parser.add_argument("--no-layer3", dest="layer3", action="store_false",
                        help="skip the ResNet-50 layer3 (N = 196) row")
    parser.add_argument("--work-dir", default=str(Path(tempfile.gettempdir())
                                                  / "reciprocam-benchmark"),
                        help="where exported artifacts and caches go")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per call in the 16-image throughput rows (default 8)")
    parser.add_argument("--json", dest="json_out", default=None, help="also write JSON here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.models = args.models or ["resnet18"]
        args.repeats = args.repeats or 5
        args.peers = args.scorecam = args.layer3 = False
    args.models = args.models or DEFAULT_MODELS
    args.repeats = args.repeats or 30
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not 1 <= args.batch_size <= 16:
        parser.error("--batch-size must be between 1 and 16")
    args.device = args.device.upper()
    if args.backend is None:
        args.backend = ["onnxruntime"] if args.device == "CUDA" else BACKENDS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker_main(json.loads(args.worker))))
        return 0
    from reciprocam_ir.backends import BackendError, create_backend

    for backend in args.backend:
        try:
            create_backend(backend, args.device, "auto")
        except BackendError as exc:
            print(f"benchmark: {backend} on {args.device}: {exc}", file=sys.stderr)
            return 2
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    log(f"{env['machine']}; {env['engines']}; work dir {work}")
    started = time.perf_counter()
    rows = []
    for spec in args.models:
        for backend in args.backend:
            rows.append(bench_row(spec, None, backend, args, work, throughput=True,
                                  first=True, check=True, repeats=args.repeats))
        if rows[-1]["tail"] == "class_token":  # ViT-ReciproCAM done naively, for contrast
            for backend in args.backend:
                rows.append(bench_row(spec, None, backend, args, work, throughput=False,
                                      first=False, check=False,
                                      repeats=max(3, args.repeats // 10),
                                      token_tail="sequences"))
    if args.layer3:
        for backend in args.backend:
            rows.append(bench_row("resnet50", "layer3", backend, args, work,
                                  throughput=False, first=False, check=False,
                                  repeats=max(3, args.repeats // 10)))
    peers = []
    if args.peers:
        export_model(args.models[0], None, work)
        peers = run_worker({"kind": "peers", "spec": args.models[0], "work": str(work),
                            "repeats": max(3, args.repeats // 3), "scorecam": args.scorecam,
                            "backend": "torch"})["peers"]
    env["wall_s"] = time.perf_counter() - started
    env["load_end"] = load_average()
    table = render(rows, peers, env)
    print(table)
    log(f"done in {env['wall_s']:.0f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"env": env, "rows": rows, "peers": peers},
                                                  indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
