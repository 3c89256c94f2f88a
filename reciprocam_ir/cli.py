"""``reciprocam explain``: explain image files or folders with an artifact."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import dataset_cli
from .artifact import ArtifactError, atomic_write_bytes
from .backends import PRECISIONS, BackendError
from .explainer import ReciproCAM
from .explanation import slug
from .masking import MASK_KINDS
from .preprocess import ImageError
from .saliency import SCORE_KINDS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reciprocam",
                                description="Gradient-free ReciproCAM explanations.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("explain", help="explain images with an exported artifact",
                       description="Write an overlay PNG per image and explained class.")
    e.add_argument("artifact", help="artifact folder written by reciprocam-export")
    e.add_argument("images", nargs="+", help="image files or folders of images")
    e.add_argument("--backend", choices=("openvino", "onnxruntime"), default=None,
                   help="inference engine (default: OpenVINO if installed)")
    e.add_argument("--device", default=None,
                   help="CPU, GPU, NPU, AUTO (OpenVINO) or CPU, CUDA (ONNX Runtime)")
    e.add_argument("--class", dest="classes", type=int, nargs="+", default=None, metavar="K",
                   help="class indices to explain (default: the top-k predicted)")
    e.add_argument("--all-classes", action="store_true", help="explain every class")
    e.add_argument("--top-k", type=int, default=1, help="explain the k best classes")
    e.add_argument("--precision", choices=PRECISIONS, default="auto")
    e.add_argument("--scores", choices=SCORE_KINDS, default="logits",
                   help="score each masked map by raw logits or softmax probabilities")
    e.add_argument("--mask", choices=MASK_KINDS, default="onehot",
                   help="onehot: keep one position (the paper); gaussian: keep a soft window; "
                        "drop: remove a soft window (best with --scores softmax)")
    e.add_argument("--mask-sigma", type=float, default=None, metavar="CELLS",
                   help="window width of gaussian/drop masks in feature cells "
                        "(default 0.85 gaussian, 1.5 drop)")
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
    dataset_cli.add_parser(sub)
    return p


DONE_DIR = ".reciprocam"
"""Per-image records in the output folder, written last: an image with a record is done."""


def done_record(out: Path, stem: str) -> Path:
    return out / DONE_DIR / f"{stem}.json"


def already_done(out: Path, stem: str, settings: dict) -> bool:
    """True when an earlier run wrote every output of this image with the same settings."""
    try:
        record = json.loads(done_record(out, stem).read_text())
    except (OSError, ValueError):
        return False
    return record.get("settings") == settings and all(
        (out / name).is_file() for name in record.get("files", []))


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


def explain(args: argparse.Namespace) -> int:
    try:
        cam = ReciproCAM(args.artifact, backend=args.backend, device=args.device,
                         precision=args.precision, scores=args.scores, mask=args.mask,
                         mask_sigma=args.mask_sigma,
                         memory_budget_mb=args.memory_budget_mb, batch_size=args.batch_size,
                         cache_dir=args.cache_dir)
    except (ArtifactError, BackendError, ValueError, MemoryError) as exc:
        print(f"reciprocam: error: {exc}", file=sys.stderr)
        return 2
    if args.classes is not None:
        bad = [k for k in args.classes if not 0 <= k < cam.artifact.num_classes]
        if bad:
            print(f"reciprocam: error: --class {bad[0]} out of range (model has "
                  f"{cam.artifact.num_classes} classes)", file=sys.stderr)
            return 2
    targets = "all" if args.all_classes else args.classes
    paths, failures = image_paths(args.images)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"reciprocam: error: cannot create output folder '{out}': {exc.strerror}",
              file=sys.stderr)
        return 2
    settings = {"artifact": str(Path(args.artifact).resolve()), "targets": targets,
                "top_k": args.top_k, "scores": args.scores, "mask": args.mask,
                "mask_sigma": args.mask_sigma, "save_npz": args.save_npz}
    owner: dict[str, Path] = {}
    todo = []
    for path in paths:
        stem = slug(path.stem)
        if stem in owner:
            failures.append((str(path), f"its outputs would overwrite those of {owner[stem]}"))
            continue
        owner[stem] = path
        if args.overwrite or not already_done(out, stem, settings):
            todo.append(path)
    skipped = len(owner) - len(todo)
    if skipped:
        print(f"reciprocam: {skipped} images already explained in {out}, skipped "
              "(--overwrite to redo)", file=sys.stderr)
    paths = todo
    done = 0
    bar = tqdm(total=len(paths), unit="img", desc="explaining", file=sys.stderr,
               disable=len(paths) < 2)
    try:
        for start in range(0, len(paths), cam.batch_size):
            loaded = []
            for path in paths[start : start + cam.batch_size]:
                try:
                    loaded.append((cam.load(path)[0], str(path)))
                except ImageError as exc:
                    failures.append((str(path), str(exc).removeprefix(f"{path}: ")))
                    bar.update(1)
            groups = [loaded] if loaded else []
            while groups:
                group = groups.pop(0)
                try:
                    exp = cam.explain([rgb for rgb, _ in group], targets, args.top_k,
                                      names=[name for _, name in group])
                except (FloatingPointError, BackendError, RuntimeError) as exc:
                    if len(group) > 1:
                        groups[:0] = [[item] for item in group]
                        continue
                    failures.append((group[0][1], str(exc).removeprefix(f"{group[0][1]}: ")))
                    bar.update(1)
                    continue
                for i in range(len(exp)):
                    files = exp.save_one(i, out, save_npz=args.save_npz)
                    record = {**exp.summary(i), "files": [str(f) for f in files]}
                    done_record(out, exp.stem(i)).parent.mkdir(exist_ok=True)
                    atomic_write_bytes(done_record(out, exp.stem(i)), json.dumps(
                        {**record, "files": [f.name for f in files], "settings": settings}
                    ).encode())
                    if args.json:
                        print(json.dumps(record), flush=True)
                    done += 1
                    bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        print(f"reciprocam: interrupted: {done} of {len(paths)} images explained; every "
              "output written is complete, and a re-run skips the done images",
              file=sys.stderr)
        return 130
    bar.close()
    for name, reason in failures:
        print(f"reciprocam: error: {name}: {reason}", file=sys.stderr)
    if failures:
        print(f"reciprocam: {done} explained, {len(failures)} failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    np.seterr(all="ignore")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # errors are ours to say
    if args.command == "explain-dataset":
        return dataset_cli.run(args)
    return explain(args)


if __name__ == "__main__":
    sys.exit(main())
