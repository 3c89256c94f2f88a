"""``reciprocam explain`` on a detection artifact: one overlay per kept box, a JSON record
per image with its ``boxes``; ``serve`` and ``explain-dataset`` refuse detection artifacts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .backends import BackendError
from .detection import DEFAULT_CONF, DEFAULT_IOU, check_thresholds
from .detection_cam import DetectionCAM
from .explainer import is_detection
from .explanation import slug
from .preprocess import ImageError


def refusal(args: argparse.Namespace) -> str | None:
    """The one-line refusal of ``serve`` / ``explain-dataset`` on a detection artifact."""
    if args.command == "serve":
        artifacts = args.artifacts
    elif args.command == "explain-dataset":
        artifacts = [args.artifact]
    else:
        return None
    for artifact in artifacts:
        if is_detection(artifact):
            return (f"{artifact}: a detection artifact; {args.command} serves classifiers only "
                    "for now (use reciprocam explain)")
    return None


def explain_boxes(args: argparse.Namespace, cam: DetectionCAM, progress: dict) -> int:
    """Explain every image's kept boxes; write one overlay per box (and ``--save-npz``)."""
    from .cli import fail, image_paths

    given = [flag for flag, value in (("--class", args.classes), ("--top-k", args.top_k),
                                      ("--all-classes", args.all_classes or None))
             if value is not None]
    if given:
        return fail(f"{', '.join(given)}: a detector explains each box it keeps; choose the "
                    "boxes with --conf and --iou")
    conf = DEFAULT_CONF if args.conf is None else args.conf
    iou = DEFAULT_IOU if args.iou is None else args.iou
    try:
        check_thresholds(conf, iou)
    except ValueError as exc:
        return fail(f"--{str(exc).split()[0]}: {exc}")
    paths, failures = image_paths(args.images)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return fail(f"cannot create output folder '{out}': {exc.strerror}")
    owner: dict[str, Path] = {}
    progress["total"] = len(paths)
    for path in paths:
        stem = slug(path.stem)
        if stem in owner:
            failures.append((str(path), f"its outputs would overwrite those of {owner[stem]}"))
            continue
        owner[stem] = path
        try:
            exp = cam.explain([path], conf=conf, iou=iou)
        except (ImageError, FloatingPointError, BackendError, RuntimeError) as exc:
            failures.append((str(path), str(exc).removeprefix(f"{path}: ")))
            continue
        files = exp.save_one(0, out, save_npz=args.save_npz)
        if args.json:
            print(json.dumps(exp.summary(0, files)), flush=True)
        progress["done"] += 1
    for name, reason in failures:
        print(f"reciprocam: error: {name}: {reason}", file=sys.stderr)
    if failures:
        print(f"reciprocam: {progress['done']} explained, {len(failures)} failed",
              file=sys.stderr)
        return 1
    return 0
