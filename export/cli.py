"""``reciprocam-export``: the command line of the exporter."""

from __future__ import annotations

import argparse
import sys

from .errors import ExportError
from .pipeline import FORMATS, export_artifact, prepare


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reciprocam-export",
        description="Cut a PyTorch classifier at a layer into f (image -> feature map) and "
                    "g (feature map -> scores), written as ONNX and/or OpenVINO IR.")
    p.add_argument("model", help="torchvision model name (resnet50) or package.module:callable")
    p.add_argument("--weights", default=None,
                   help="state-dict file, DEFAULT (torchvision, downloads) or none "
                        "(default: DEFAULT for torchvision names, the callable's own weights)")
    p.add_argument("--layer", default=None,
                   help="module path to cut after (default: last valid spatial cut)")
    p.add_argument("--input-size", type=int, default=None, help="square input size in pixels")
    p.add_argument("--format", choices=FORMATS, default="both")
    p.add_argument("--out", default=None, help="artifact folder (default: models/<name>)")
    p.add_argument("--list-layers", action="store_true",
                   help="print the valid cut points with their feature shapes and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return p


def list_layers(model: str, weights: str | None, size: int | None) -> None:
    _, graph, _ = prepare(model, weights if weights else "none", size)
    default = graph.default_cut()
    print(f"{'layer':<40} {'feature (C x h x w)':<20} also named")
    for cut in graph.cuts:
        mark = "  (default)" if cut is default else ""
        shape = " x ".join(map(str, cut.shape))
        print(f"{cut.name:<40} {shape:<20} {', '.join(cut.names[1:])}{mark}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    try:
        if args.list_layers:
            list_layers(args.model, args.weights, args.input_size)
            return 0
        out = export_artifact(args.model, args.weights, args.layer, args.input_size,
                              args.format, args.out, log)
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
