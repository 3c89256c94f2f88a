"""``reciprocam explain``: explain image files or folders with an artifact."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import dataset_cli, detect_cli
from .artifact import atomic_write_bytes, sha256_file
from .backends import add_engine_arguments
from .detection import DEFAULT_CONF, DEFAULT_IOU
from .detection_cam import DetectionCAM
from .explainer import ReciproCAM
from .explanation import slug
from .image_reader import DECODE_MODES
from .mask_options import mask_option_problem
from .masking import (
    DEFAULT_DROP_SIGMA,
    DEFAULT_MASK_SIGMA,
    DEFAULT_WINDOW_SIGMA,
    DEFAULT_WINDOW_STRENGTH,
    MASK_KINDS,
)
from .precision import PrecisionWarning
from .preprocess import DEFAULT_MAX_PIXELS, ImageError
from .saliency import SCORE_KINDS
from .serving.budget import (
    DEFAULT_DECODE_THREADS,
    DEFAULT_PROCESS_PIXELS,
    DEFAULT_REQUEST_PIXELS,
)
from .targets import DEFAULT_MAX_TARGETS


def add_mask_arguments(p: argparse.ArgumentParser) -> None:
    """The map's options, shared by ``explain`` and ``serve`` (unset: the artifact's own)."""
    p.add_argument("--scores", choices=SCORE_KINDS, default=None,
                   help="score each masked map by raw logits or softmax probabilities "
                        "(default: with --mask, the mask's own: softmax for window, logits "
                        "otherwise; without, the artifact's)")
    p.add_argument("--mask", choices=MASK_KINDS, default=None,
                   help="default: the artifact's own map (the mask, sigma, strength and scores "
                        "its explain graph was exported with). onehot: keep one position "
                        "(the paper; the default for CNNs); window: keep a soft window "
                        "renormalised over the map, at a strength, "
                        "softmax scores (better maps, see docs/evaluation.md); gaussian: keep "
                        "a soft window (the default for ViTs); drop: remove a soft window "
                        "(best with --scores softmax)")
    p.add_argument("--mask-sigma", type=float, default=None, metavar="CELLS",
                   help="window width of gaussian/drop/window masks in feature cells "
                        f"(default {DEFAULT_MASK_SIGMA:.2f} gaussian, {DEFAULT_DROP_SIGMA:g} drop, "
                        f"{DEFAULT_WINDOW_SIGMA:g} window)")
    p.add_argument("--mask-strength", type=float, default=None, metavar="S",
                   help="strength of the window mask: the kept evidence is S/N of the whole "
                        f"map's (default {DEFAULT_WINDOW_STRENGTH:g})")


def add_max_targets_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-targets", type=int, default=DEFAULT_MAX_TARGETS, metavar="N",
                   help="refuse to explain more than N classes per image (after removing "
                        "repeated ones; default: %(default)s)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reciprocam",
                                description="Gradient-free ReciproCAM explanations.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="explain images with an exported artifact",
                       description="Write an overlay PNG per image and explained class.")
    e.add_argument("artifact", help="artifact folder written by reciprocam-export")
    e.add_argument("images", nargs="+", help="image files or folders of images")
    add_engine_arguments(e)
    e.add_argument("--class", dest="classes", type=int, nargs="+", default=None, metavar="K",
                   help="class indices to explain (default: the top-k predicted)")
    e.add_argument("--all-classes", action="store_true", help="explain every class")
    e.add_argument("--top-k", type=int, default=None,
                   help="explain the k best predicted classes (default 1)")
    add_mask_arguments(e)
    add_max_targets_argument(e)
    e.add_argument("--decode", choices=DECODE_MODES, default="exact",
                   help="exact (default): decode every image in full, the manifest's recipe as "
                        "torchvision computes it; reduced: decode JPEGs at the smallest 1/2, "
                        "1/4 or 1/8 scale that leaves 3x the resize target (shrink on load: "
                        "faster on photos, maps within about 0.06, docs/performance.md)")
    e.add_argument("--conf", type=float, default=None,
                   help=f"detectors: keep boxes scoring above this (default {DEFAULT_CONF:g}, "
                        "as Ultralytics' predict)")
    e.add_argument("--iou", type=float, default=None,
                   help=f"detectors: NMS IoU threshold (default {DEFAULT_IOU:g}, as Ultralytics' "
                        "predict)")
    e.add_argument("--out", default="explanations", help="output folder (default: explanations)")
    e.add_argument("--save-npz", action="store_true", help="also write <stem>.npz per image")
    e.add_argument("--json", action="store_true", help="print one JSON object per image")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--memory-budget-mb", type=float, default=256.0,
                   help="largest masked batch per g call")
    e.add_argument("--cache-dir", default=None,
                   help="keep compiled graphs here so the next start is faster")
    e.add_argument("--overwrite", action="store_true",
                   help="explain again images whose outputs already exist in --out")
    s = sub.add_parser("serve", help="serve explanations over HTTP/gRPC (KServe)",
                       description="Serve each artifact as a KServe model: v1 :predict and "
                                   ":explain, v2 infer (needs pip install reciprocam-ir[serve]).")
    s.add_argument("artifacts", nargs="+", metavar="ARTIFACT_DIR",
                   help="artifact folders written by reciprocam-export")
    s.add_argument("--name", action="append", default=None,
                   help="model name in the URLs, once per artifact (default: the manifest's)")
    s.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="interface HTTP and gRPC listen on (default: %(default)s, this machine "
                        "only; 0.0.0.0: every interface, as in a container)")
    s.add_argument("--http-port", type=int, default=8080, metavar="PORT",
                   help="v1 and v2 REST, health, /metrics (default: 8080)")
    s.add_argument("--grpc-port", type=int, default=8081, metavar="PORT",
                   help="v2 gRPC (default: 8081)")
    add_engine_arguments(s)
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="HTTP server processes, each with its own compiled model")
    s.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse larger images (default: %(default)s)")
    s.add_argument("--request-pixels", type=int, default=DEFAULT_REQUEST_PIXELS, metavar="N",
                   help="refuse a request whose images have more pixels together "
                        "(default: %(default)s)")
    s.add_argument("--process-pixels", type=int, default=DEFAULT_PROCESS_PIXELS, metavar="N",
                   help="pixels the requests in flight in one process may hold together; "
                        "beyond, a request is refused with 429 (default: %(default)s)")
    s.add_argument("--decode-threads", type=int, default=DEFAULT_DECODE_THREADS, metavar="N",
                   help="images decoded at once per process (default: %(default)s)")
    s.add_argument("--decode", choices=DECODE_MODES, default="exact",
                   help="exact (default): decode every uploaded image in full; reduced: decode "
                        "JPEGs at the smallest 1/2, 1/4 or 1/8 scale that leaves 3x the resize "
                        "target (shrink on load, as explain --decode reduced); for every model "
                        "served, :predict and :explain alike")
    add_mask_arguments(s)
    add_max_targets_argument(s)
    dataset_cli.add_parser(sub)
    return p


DONE_DIR = ".reciprocam"
"""Per-image records in the output folder, written last: an image with a record is done."""


def done_record(out: Path, stem: str) -> Path:
    return out / DONE_DIR / f"{stem}.json"


def earlier_record(out: Path, stem: str, key: dict) -> dict | None:
    """The record of an earlier run that wrote every output of this image from the same
    image, artifact and options (``key``), else None."""
    try:
        record = json.loads(done_record(out, stem).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    files = record.get("files")
    if not isinstance(files, list) or not all(
            isinstance(name, str) and (out / name).is_file() for name in files):
        return None
    return record


def contradiction(args: argparse.Namespace) -> str | None:
    """Options that cannot all be honoured together: named before any work starts."""
    if args.classes is not None and args.all_classes:
        return "--class and --all-classes both choose the classes to explain; give one"
    if args.top_k is not None and (args.classes is not None or args.all_classes):
        given = "--class" if args.classes is not None else "--all-classes"
        return f"--top-k picks the predicted classes to explain; it cannot be combined with {given}"
    return mask_contradiction(args)


def mask_contradiction(args: argparse.Namespace) -> str | None:
    """Mask options that do not apply to the mask chosen (``explain`` and ``serve``)."""
    return mask_option_problem(args.mask, args.mask_sigma, args.mask_strength, flag_prefix="")


def image_paths(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand folders (their non-hidden files, sorted); report inputs that do not exist."""
    paths, missing = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                missing.append((item, "folder holds no files"))
            paths.extend(files)
        elif p.is_file():
            paths.append(p)
        else:
            missing.append((item, "no such file or folder"))
    return paths, missing


def say_warnings() -> None:
    """Our own warnings as one ``reciprocam: warning:`` line each; others as Python prints them."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if issubclass(category, PrecisionWarning):
            tqdm.write(f"reciprocam: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def fail(message: str, code: int = 2) -> int:
    print(f"reciprocam: error: {message}", file=sys.stderr)
    return code


def explain(args: argparse.Namespace) -> int:
    """Run ``explain``; Ctrl-C at any point ends with one line and exit code 130."""
    progress = {"done": 0, "total": None}
    try:
        return explain_images(args, progress)
    except KeyboardInterrupt:
        if progress["total"] is None:
            print("reciprocam: interrupted during start-up; no image was explained",
                  file=sys.stderr)
        else:
            print(f"reciprocam: interrupted: {progress['done']} of {progress['total']} images "
                  "explained; every output written is complete, and a re-run skips the done "
                  "images", file=sys.stderr)
        return 130


Loaded = list[tuple[np.ndarray, Path]]


def load_batch(cam: ReciproCAM, paths: list[Path]) -> tuple[Loaded, list[tuple[str, str]]]:
    """The images of ``paths`` decoded, and (path, reason) for each one refused."""
    loaded, refused = [], []
    for path in paths:
        try:
            loaded.append((cam.load(path)[0], path))
        except ImageError as exc:
            refused.append((str(path), str(exc).removeprefix(f"{path}: ")))
    return loaded, refused


def prefetched(cam: ReciproCAM, paths: list[Path]
               ) -> Iterator[tuple[Loaded, list[tuple[str, str]]]]:
    """``load_batch`` of each batch of ``paths`` in turn, the next batch decoded in one
    background thread while the caller explains and saves the current one (OpenCV decodes
    and resizes without the GIL); at most two batches are held at once."""
    batches = [paths[i : i + cam.batch_size] for i in range(0, len(paths), cam.batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reciprocam-decode") as pool:
        pending = pool.submit(load_batch, cam, batches[0])
        for following in batches[1:]:
            current = pending.result()
            pending = pool.submit(load_batch, cam, following)
            yield current
        yield pending.result()


def explain_images(args: argparse.Namespace, progress: dict) -> int:
    problem = contradiction(args)
    if problem:
        return fail(problem)
    targets = "all" if args.all_classes else args.classes
    top_k = 1 if args.top_k is None else args.top_k
    try:
        cam = ReciproCAM(args.artifact, backend=args.backend, device=args.device,
                         precision=args.precision, scores=args.scores, mask=args.mask,
                         mask_sigma=args.mask_sigma, mask_strength=args.mask_strength,
                         memory_budget_mb=args.memory_budget_mb, batch_size=args.batch_size,
                         cache_dir=args.cache_dir, max_targets=args.max_targets,
                         decode=args.decode)
    except (ValueError, MemoryError) as exc:  # ValueError: also ArtifactError, BackendError
        return fail(str(exc).replace("max_targets", "--max-targets"))
    if isinstance(cam, DetectionCAM):
        return detect_cli.explain_boxes(args, cam, progress)
    if args.conf is not None or args.iou is not None:
        return fail("--conf and --iou apply to detection artifacts; "
                    f"{args.artifact} explains a classifier")
    try:
        targets = cam.check_targets(targets, top_k)
    except ValueError as exc:
        given = "--class" if args.classes is not None else \
            "--all-classes" if args.all_classes else "--top-k"
        return fail(f"{given}: {exc}")
    paths, failures = image_paths(args.images)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"cannot create output folder '{out}': {exc.strerror}")
    options = {"manifest_sha256": cam.artifact.manifest_sha256, "backend": cam.backend.name,
               "device": cam.backend.device, "precision": cam.backend.precision,
               "targets": targets, "top_k": top_k, "scores": cam.scores, "mask": cam.mask,
               "mask_sigma": cam.mask_sigma, "mask_strength": cam.mask_strength,
               "save_npz": args.save_npz, "decode": cam.decode}
    owner: dict[str, Path] = {}
    keys: dict[Path, dict] = {}
    todo, skipped = [], []
    for path in paths:
        stem = slug(path.stem)
        if stem in owner:
            failures.append((str(path), f"its outputs would overwrite those of {owner[stem]}"))
            continue
        owner[stem] = path
        try:
            keys[path] = {**options, "image_sha256": sha256_file(path)}
        except OSError as exc:
            failures.append((str(path), f"cannot read: {exc.strerror}"))
            continue
        record = None if args.overwrite else earlier_record(out, stem, keys[path])
        if record is None:
            todo.append(path)
        else:
            skipped.append((path, record))
    if skipped:
        print(f"reciprocam: {len(skipped)} images already explained in {out}, skipped "
              "(--overwrite to redo)", file=sys.stderr)
        if args.json:
            for path, record in skipped:  # as when explained: the summary, full file paths
                print(json.dumps({**{k: v for k, v in record.items() if k != "key"},
                                  "path": str(path),
                                  "files": [str(out / n) for n in record["files"]]}),
                      flush=True)
    progress["total"] = len(todo)
    with tqdm(total=len(todo), unit="img", desc="explaining", file=sys.stderr,
              disable=len(todo) < 2) as bar:
        for loaded, refused in prefetched(cam, todo):
            failures.extend(refused)
            bar.update(len(refused))
            batch = [path for _, path in loaded]
            for group, exp in cam.explain_isolating([rgb for rgb, _ in loaded], targets, top_k,
                                                    [str(path) for path in batch]):
                if isinstance(exp, Exception):
                    name = str(batch[group[0]])
                    failures.append((name, str(exp).removeprefix(f"{name}: ")))
                    bar.update(1)
                    continue
                for i, path in enumerate(batch[k] for k in group):
                    files = exp.save_one(i, out, save_npz=args.save_npz)
                    record = {**exp.summary(i), "files": [str(f) for f in files]}
                    done_record(out, exp.stem(i)).parent.mkdir(exist_ok=True)
                    atomic_write_bytes(done_record(out, exp.stem(i)), json.dumps(
                        {**record, "files": [f.name for f in files], "key": keys[path]}
                    ).encode())
                    if args.json:
                        print(json.dumps(record), flush=True)
                    progress["done"] += 1
                    bar.update(1)
    for name, reason in failures:
        print(f"reciprocam: error: {name}: {reason}", file=sys.stderr)
    if failures:
        print(f"reciprocam: {progress['done']} explained, {len(failures)} failed",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    np.seterr(all="ignore")
    say_warnings()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # errors are ours to say
    refused = detect_cli.refusal(args)
    if refused:
        return fail(refused)
    if args.command == "serve":
        from .serving import serve  # kserve is imported by this command only

        return serve(args)
    if args.command == "explain-dataset":
        return dataset_cli.run(args)
    return explain(args)


if __name__ == "__main__":
    sys.exit(main())
