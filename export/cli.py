"""``reciprocam-export``: the command line of the exporter."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reciprocam_ir.masking import DEFAULT_MASK, DEFAULT_WINDOW_SIGMA, DEFAULT_WINDOW_STRENGTH
from reciprocam_ir.preprocess import INTERPOLATIONS, PAD_POSITIONS

from .errors import ExportError
from .explain_graph import EXPLAIN_MASKS
from .file_cut import is_graph_file
from .staging import FORMATS


def parser() -> argparse.ArgumentParser:
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
    p.add_argument("--input-size", type=int, default=None,
                   help="square input size in pixels (graph files: only for a dynamic H, W; "
                        "default 224)")
    p.add_argument("--format", choices=FORMATS, default="both")
    p.add_argument("--out", default=None, help="artifact folder (default: models/<name>)")
    p.add_argument("--explain-top-k", type=int, default=1, metavar="K",
                   help="classes the explain graph explains: the K best (default 1)")
    p.add_argument("--explain-mask", choices=EXPLAIN_MASKS, default=DEFAULT_MASK,
                   help="the map the explain graph computes: onehot (the paper's, logit "
                        "scores) or window (the renormalised window, softmax scores) "
                        f"(default {DEFAULT_MASK})")
    p.add_argument("--explain-mask-sigma", type=float, default=None, metavar="CELLS",
                   help="window width of --explain-mask window in feature cells "
                        f"(default {DEFAULT_WINDOW_SIGMA:g})")
    p.add_argument("--explain-mask-strength", type=float, default=None, metavar="S",
                   help="strength of --explain-mask window (default "
                        f"{DEFAULT_WINDOW_STRENGTH:g})")
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
    g.add_argument("--resize", choices=("direct", "crop", "pad"), default=None,
                   help="direct: straight to the input size (default); crop: shorter side to "
                        "--resize-size, centre crop (the default with --resize-size); pad: "
                        "fit inside keeping the aspect ratio, pad the rest")
    g.add_argument("--resize-size", type=int, default=None, metavar="N",
                   help="resize the shorter side to N, then centre-crop the input size")
    g.add_argument("--pad-position", choices=PAD_POSITIONS, default=None,
                   help="with --resize pad: where the image goes (default center; top_left "
                        "pads right and bottom, as for text lines)")
    g.add_argument("--pad-value", type=float, default=None, metavar="V",
                   help="with --resize pad: pixel value 0..255 of the padding (default 0)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, default=None,
                   help="resize interpolation (default bilinear)")
    g.add_argument("--antialias", choices=("on", "off"), default=None,
                   help="antialias when shrinking, as torchvision and PIL (default on; off: "
                        "as cv2.resize)")
    g.add_argument("--keep-softmax", action="store_true",
                   help="keep a trailing Softmax in g (default: drop it, score logits)")
    return p


def print_cuts(cuts: list[tuple[str, tuple[int, ...], tuple[str, ...]]], default: str) -> None:
    """The valid cuts as a table: name, feature shape, other names; the default marked."""
    width = max([40, *(len(name) + 2 for name, _, _ in cuts)])
    print(f"{'layer':<{width}} {'feature (C x h x w)':<20} also named")
    for name, shape, aliases in cuts:
        mark = "  (default)" if name == default else ""
        print(f"{name:<{width}} {' x '.join(map(str, shape)):<20} {', '.join(aliases)}{mark}")


def list_layers(model: str, weights: str | None, size: int | None) -> None:
    from .pipeline import prepare

    _, graph, _ = prepare(model, weights if weights else "none", size)
    print_cuts([(c.name, c.shape, c.names[1:]) for c in graph.cuts], graph.default_cut().name)


GRAPH_ONLY = ("mean", "std", "scale", "color", "keep_softmax", "resize", "resize_size",
              "pad_position", "pad_value", "interpolation", "antialias")


def check_torch_args(args: argparse.Namespace) -> None:
    """Refuse graph-file-only flags for a PyTorch model (its preprocessing is known)."""
    given = [f"--{n.replace('_', '-')}" for n in GRAPH_ONLY
             if getattr(args, n) not in (None, False)]
    if given:
        raise ExportError(f"{', '.join(given)} apply only to .onnx/.xml model files")


def export_file(args: argparse.Namespace, log: Callable[[str], None]) -> Path | None:
    """Export (or with --list-layers, list) an ONNX/IR file; no torch is imported."""
    from .graph_export import export_graph_file, open_graph

    if args.weights is not None:
        raise ExportError(f"{args.model}: --weights does not apply to a graph file "
                          "(its weights are in the file)")
    if args.list_layers:
        graph = open_graph(args.model, args.input_size)
        print_cuts([(c.name, c.shape, c.aliases) for c in graph.cuts],
                   graph.cuts[-1].name if graph.cuts else "")
        return None
    options = {k: getattr(args, k) for k in ("mean", "std", "scale", "color", "resize",
                                             "resize_size", "pad_position", "pad_value",
                                             "interpolation")
               if getattr(args, k) is not None}
    if args.antialias is not None:
        options["antialias"] = args.antialias == "on"
    return export_graph_file(args.model, args.layer, args.input_size, args.format, args.out,
                             log, keep_softmax=args.keep_softmax, **explain_options(args),
                             **options)


def explain_options(args: argparse.Namespace) -> dict[str, Any]:
    """The explain graph's options, as both export paths take them."""
    return {"explain_top_k": args.explain_top_k, "explain_mask": args.explain_mask,
            "explain_mask_sigma": args.explain_mask_sigma,
            "explain_mask_strength": args.explain_mask_strength}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        if is_graph_file(args.model):
            out = export_file(args, log)
            if out is None:
                return 0
        elif args.list_layers:
            list_layers(args.model, args.weights, args.input_size)
            return 0
        else:
            check_torch_args(args)
            from .pipeline import export_artifact

            out = export_artifact(args.model, args.weights, args.layer, args.input_size,
                                  args.format, args.out, log, **explain_options(args))
    except ExportError as exc:
        print(f"reciprocam-export: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reciprocam-export: interrupted; nothing written", file=sys.stderr)
        return 130
    log(f"wrote {out}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
