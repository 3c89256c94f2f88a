"""``reciprocam-export``: the command line of the exporter."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ExportError
from .input_size import parse_input_size


def parser() -> argparse.ArgumentParser:
    # numpy and OpenCV come with these: imported once Ctrl-C is handled
    from reciprocam_ir.masking import (
        DEFAULT_MASK,
        DEFAULT_WINDOW_SIGMA,
        DEFAULT_WINDOW_STRENGTH,
        MASK_KINDS,
    )
    from reciprocam_ir.preprocess import INTERPOLATIONS, PAD_POSITIONS, RESAMPLERS

    from .artifact.staging import FORMATS

    p = argparse.ArgumentParser(
        prog="reciprocam-export",
        description="Cut a PyTorch classifier, or an ONNX / OpenVINO IR classifier file, at a "
                    "layer into f (image -> feature map) and g (feature map -> scores), "
                    "written as ONNX and/or OpenVINO IR.")
    p.add_argument("model", help="torchvision model name (resnet50), package.module:callable, "
                                 "or a model.onnx / model.xml file")
    p.add_argument("--weights", default=None,
                   help="state-dict file, DEFAULT (torchvision, downloads) or none "
                        "(default: DEFAULT for torchvision names, the callable's own weights)")
    p.add_argument("--layer", default=None,
                   help="module path to cut after, or for a graph file a tensor (ONNX) or "
                        "node (IR) name (default: last valid spatial cut)")
    p.add_argument("--input-size", type=parse_input_size, default=None, metavar="N|HxW",
                   help="input size in pixels, N (square) or HxW such as 48x192 (graph files: "
                        "only for a dynamic H, W; default 224)")
    p.add_argument("--format", choices=FORMATS, default="both")
    p.add_argument("--out", default=None, help="artifact folder (default: models/<name>)")
    p.add_argument("--labels", default=None, metavar="FILE",
                   help="class names, one per line or a JSON list (default: the model's own: "
                        "torchvision's, reciprocam_labels, or a graph file's metadata)")
    p.add_argument("--explain-top-k", type=int, default=1, metavar="K",
                   help="classes the explain graph explains: the K best (default 1)")
    p.add_argument("--explain-mask", choices=MASK_KINDS, default=None,
                   help="the map the explain graph computes: onehot (the paper's, logit "
                        "scores), window (the renormalised window, softmax scores), gaussian "
                        f"or drop (default: the runtime's, {DEFAULT_MASK} for maps, gaussian "
                        "for ViT tokens)")
    p.add_argument("--explain-mask-sigma", type=float, default=None, metavar="CELLS",
                   help="window width of --explain-mask gaussian/drop/window in feature cells "
                        f"(default as the runtime's, {DEFAULT_WINDOW_SIGMA:g} for window)")
    p.add_argument("--explain-mask-strength", type=float, default=None, metavar="S",
                   help="strength of --explain-mask window (default "
                        f"{DEFAULT_WINDOW_STRENGTH:g})")
    p.add_argument("--task", choices=("classify", "detect"), default=None,
                   help="graph files: a classifier, or a YOLO detector (raw output batch x "
                        "4+classes x anchors) explained box by box (default: from the output)")
    p.add_argument("--list-layers", action="store_true",
                   help="print the valid cut points with their feature shapes and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    g = p.add_argument_group("graph files (.onnx/.xml) only: preprocessing and scores")
    g.add_argument("--mean", type=float, nargs=3, default=None, metavar="M",
                   help="per-channel mean after scaling (default: ImageNet 0.485 0.456 0.406)")
    g.add_argument("--std", type=float, nargs=3, default=None, metavar="S",
                   help="per-channel std (default: ImageNet 0.229 0.224 0.225)")
    g.add_argument("--scale", type=float, default=None,
                   help="pixel multiplier before mean/std (default: 1/255)")
    g.add_argument("--color", choices=("RGB", "BGR"), default=None,
                   help="channel order the graph expects (default: RGB)")
    g.add_argument("--resize", choices=("direct", "crop", "squash-crop", "pad"), default=None,
                   help="direct: straight to the input size (default); crop: shorter side to "
                        "--resize-size, centre crop (the default with --resize-size); "
                        "squash-crop: both sides to --resize-size, centre crop; pad: "
                        "fit inside keeping the aspect ratio, pad the rest")
    g.add_argument("--resize-size", type=int, default=None, metavar="N",
                   help="resize the shorter side (squash-crop: both sides) to N, then "
                        "centre-crop the input size")
    g.add_argument("--pad-position", choices=PAD_POSITIONS, default=None,
                   help="with --resize pad: where the image goes (default center; top_left "
                        "pads right and bottom, as for text lines)")
    g.add_argument("--pad-value", type=float, default=None, metavar="V",
                   help="with --resize pad: pixel value 0..255 of the padding (default 0)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                   help="resize interpolation (default bilinear)")
    g.add_argument("--resampler", choices=RESAMPLERS, default=None,
                   help="who computes the resize: torchvision (its tensor resize, the default) "
                        "or pil (Pillow's Image.resize, as timm, Hugging Face and Ultralytics "
                        "do; the default for a recipe read from those tools)")
    g.add_argument("--antialias", choices=("on", "off"), default=None,
                   help="antialias when shrinking, as torchvision and PIL (default on; off: "
                        "as cv2.resize)")
    g.add_argument("--keep-softmax", action="store_true",
                   help="keep a trailing Softmax in g (default: drop it, score logits)")
    return p


def print_cuts(cuts: list[tuple[str, str, tuple[str, ...]]], default: str) -> None:
    """The valid cuts as a table: name, feature description, other names; the default
    marked."""
    width = max([40, *(len(name) + 2 for name, _, _ in cuts)])
    shown = [description for _, description, _ in cuts]
    column = max([20, *(len(s) + 1 for s in shown)])
    print(f"{'layer':<{width}} {'feature (C x h x w)':<{column}} also named")
    for (name, _, aliases), shape in zip(cuts, shown, strict=True):
        mark = "  (default)" if name == default else ""
        print(f"{name:<{width}} {shape:<{column}} {', '.join(aliases)}{mark}")


def list_layers(model: str, weights: str | None, size: tuple[int, int] | None) -> None:
    from .torch.pipeline import prepare

    _, graph, _ = prepare(model, weights if weights else "none", size)
    print_cuts([(c.name, c.description, c.names[1:]) for c in graph.cuts],
               graph.default_cut().name)


GRAPH_ONLY = ("task", "mean", "std", "scale", "color", "keep_softmax", "resize", "resize_size",
              "pad_position", "pad_value", "interpolation", "resampler", "antialias")


def check_torch_args(args: argparse.Namespace) -> None:
    """Refuse graph-file-only flags for a PyTorch model (its preprocessing is known)."""
    given = [f"--{n.replace('_', '-')}" for n in GRAPH_ONLY
             if getattr(args, n) not in (None, False)]
    if given:
        raise ExportError(f"{', '.join(given)} apply only to .onnx/.xml model files")


def export_file(args: argparse.Namespace, log: Callable[[str], None]) -> Path | None:
    """Export (or with --list-layers, list) an ONNX/IR file; no torch is imported."""
    from .graphfile.detect_cut import is_detector
    from .graphfile.pipeline import export_graph_file, open_graph

    if args.weights is not None:
        raise ExportError(f"{args.model}: --weights does not apply to a graph file "
                          "(its weights are in the file)")
    if args.task == "detect" or (args.task is None and not args.list_layers
                                 and is_detector(args.model)):
        return export_detector_file(args, log)
    if args.list_layers:
        graph = open_graph(args.model, args.input_size)
        print_cuts([(c.name, c.description, c.aliases) for c in graph.cuts],
                   graph.cuts[-1].name if graph.cuts else "")
        return None
    options = {k: getattr(args, k) for k in ("mean", "std", "scale", "color", "resize",
                                             "resize_size", "pad_position", "pad_value",
                                             "interpolation", "resampler")
               if getattr(args, k) is not None}
    if args.antialias is not None:
        options["antialias"] = args.antialias == "on"
    return export_graph_file(args.model, args.layer, args.input_size, args.format, args.out,
                             log, keep_softmax=args.keep_softmax, labels=args.labels,
                             **explain_options(args), **options)


def export_detector_file(args: argparse.Namespace, log: Callable[[str], None]) -> Path:
    """Export a YOLO detector graph file as a detection artifact."""
    from .graphfile.detect_pipeline import export_detector

    refused = [f"--{n.replace('_', '-')}" for n in ("keep_softmax", "list_layers", "resize_size")
               if getattr(args, n) not in (None, False)]
    refused += [f"--{n.replace('_', '-')}" for n, default in (
        ("explain_top_k", 1), ("explain_mask", None), ("explain_mask_sigma", None),
        ("explain_mask_strength", None)) if getattr(args, n) != default]
    if refused:
        raise ExportError(f"{args.model}: {', '.join(refused)} do not apply to a detector")
    options = {k: getattr(args, k) for k in ("mean", "std", "scale", "color", "resize",
                                             "pad_position", "pad_value", "interpolation",
                                             "resampler")}
    if args.antialias is not None:
        options["antialias"] = args.antialias == "on"
    return export_detector(args.model, args.layer, args.input_size, args.format, args.out,
                           log, labels=args.labels, **options)


def explain_options(args: argparse.Namespace) -> dict[str, Any]:
    """The explain graph's options, as both export paths take them."""
    return {"explain_top_k": args.explain_top_k, "explain_mask": args.explain_mask,
            "explain_mask_sigma": args.explain_mask_sigma,
            "explain_mask_strength": args.explain_mask_strength}


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C while heavy libraries import, then raise it as KeyboardInterrupt.

    A SIGINT inside a native library's initialisation (torch, OpenVINO) can abort the
    process instead of raising; held here, it becomes the usual one-line "interrupted".
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def import_libraries(model: str) -> None:
    """Import what exporting ``model`` needs up front: torch or onnx, OpenVINO, numpy."""
    from .graphfile.file_cut import is_graph_file

    if is_graph_file(model):
        from .graphfile import pipeline  # noqa: F401
    else:
        from .torch import pipeline  # noqa: F401


def stderr_log(quiet: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def run(args: argparse.Namespace, log: Callable[[str], None]) -> Path | None:
    """Export (or list the layers of) ``args.model``; the artifact's path, None for a list."""
    from .graphfile.file_cut import is_graph_file

    if args.explain_top_k < 1:
        raise ExportError(f"--explain-top-k {args.explain_top_k}: must be at least 1")
    if is_graph_file(args.model):
        return export_file(args, log)
    if args.list_layers:
        list_layers(args.model, args.weights, args.input_size)
        return None
    check_torch_args(args)
    from .torch.pipeline import export_artifact

    return export_artifact(args.model, args.weights, args.layer, args.input_size, args.format,
                           args.out, log, labels=args.labels, **explain_options(args))


def main(argv: list[str] | None = None) -> int:
    try:
        with interrupts_deferred():
            args = parser().parse_args(argv)
            import_libraries(args.model)
        log = stderr_log(args.quiet)
        out = run(args, log)
    except ExportError as exc:
        print(f"reciprocam-export: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reciprocam-export: interrupted; nothing written", file=sys.stderr)
        return 130
    if out is not None:
        log(f"wrote {out}")
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
