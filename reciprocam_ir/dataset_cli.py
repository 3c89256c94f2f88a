"""``reciprocam explain-dataset``: the command line of :mod:`reciprocam_ir.dataset`.

Kept apart from that module so that ``reciprocam`` builds its parser without Ray: Ray is
imported only when this command runs, and its absence is one line naming the extra.
"""

from __future__ import annotations

import argparse
import sys

from .artifact import ArtifactError
from .backends import BackendError, add_engine_arguments
from .image_reader import DECODE_MODES
from .messages import first_line

RAY_MISSING = "explain-dataset needs Ray Data: pip install reciprocam-ir[ray]"
FAILED_EXIT_BASE = 10
MAX_EXIT_FAILURES = 100
"""Exit status when files failed: FAILED_EXIT_BASE + their number, counted up to
MAX_EXIT_FAILURES (11-110; 110 means 100 or more), apart from 2 (could not start, Ray failed)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "explain-dataset", help="explain every image of a dataset on Ray Data",
        description="Explain image files on Ray Data (embedded here, or a cluster with "
                    "--address) and write one Parquet row per file into --out. A re-run with "
                    "the same --out explains only the files that have no row yet. SOURCE, --out "
                    "and the artifact may be URIs (s3://, gs://, ...). Exit status: 0 when "
                    f"every file was explained; {FAILED_EXIT_BASE} + the number of files that "
                    f"failed ({FAILED_EXIT_BASE + 1}-{FAILED_EXIT_BASE + MAX_EXIT_FAILURES}, "
                    f"{FAILED_EXIT_BASE + MAX_EXIT_FAILURES} meaning {MAX_EXIT_FAILURES} or "
                    "more); 2 when the run cannot start or Ray fails; 130 when interrupted.")
    d.add_argument("artifact", help="artifact folder written by reciprocam-export (or its URI)")
    d.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="image files, folders (walked recursively), globs, or URIs of objects "
                        "or prefixes (s3://bucket/images/)")
    d.add_argument("--out", required=True, metavar="OUT_DIR",
                   help="folder (or URI) of Parquet files, one row per input file")
    which = d.add_mutually_exclusive_group()
    which.add_argument("--top-k", type=int, default=None, metavar="K",
                       help="explain the k best classes of each image (default 1)")
    which.add_argument("--class", dest="classes", type=int, nargs="+", default=None,
                       metavar="K", help="class indices to explain for every image")
    add_engine_arguments(d)
    d.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="images per actor call (default 8)")
    d.add_argument("--workers", type=int, default=1, metavar="N",
                   help="Ray actors, each holding one compiled explainer (default 1)")
    d.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C",
                   help="CPUs Ray reserves for each actor (default 1); on a cluster, a node's "
                        "cores place one actor per node, whose engine then uses them all")
    d.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to join (default: RAY_ADDRESS, else Ray runs embedded "
                        "on this machine)")
    d.add_argument("--overlays", default=None, metavar="DIR",
                   help="also write an overlay PNG per image and class into DIR")
    d.add_argument("--limit", type=int, default=None, metavar="N",
                   help="explain at most N of the files that have no row yet")
    d.add_argument("--rows-per-file", type=int, default=1000, metavar="R",
                   help="rows per Parquet file, exactly (the run's last file holds the rest); "
                        "also the unit of work of an actor: an interruption loses at most R "
                        "rows per actor (default 1000)")
    d.add_argument("--decode", choices=DECODE_MODES, default="exact",
                   help="exact (default): decode every image in full; reduced: decode JPEGs at "
                        "the smallest 1/2, 1/4 or 1/8 scale that keeps 3x the resize target "
                        "(shrink on load, as reciprocam explain --decode reduced); part of the "
                        "settings a re-run must match")
    d.add_argument("--filesystem-option", dest="filesystem_options", action="append",
                   default=[], metavar="KEY=VALUE",
                   help="keyword argument of the filesystem opening URIs, e.g. "
                        "endpoint_override=http://127.0.0.1:9000 (S3 also reads the AWS_* "
                        "environment variables); repeatable")


def run(args: argparse.Namespace) -> int:
    try:
        import ray.data  # noqa: F401 - the extra's presence, checked before anything else
    except ImportError:
        print(f"reciprocam: error: {RAY_MISSING}", file=sys.stderr)
        return 2
    import ray.exceptions

    from . import dataset
    from .dataset_storage import parse_options

    try:
        summary = dataset.write_explanations(
            args.artifact, args.sources, args.out, targets=args.classes,
            top_k=args.top_k if args.top_k is not None else 1, backend=args.backend,
            device=args.device, precision=args.precision, batch_size=args.batch_size,
            workers=args.workers, cpus_per_worker=args.cpus_per_worker,
            overlays=args.overlays, limit=args.limit, rows_per_file=args.rows_per_file,
            address=args.address, filesystem_options=parse_options(args.filesystem_options),
            decode=args.decode, log=lambda line: print(line, file=sys.stderr))
    except (ArtifactError, BackendError, ValueError, MemoryError) as exc:
        print(f"reciprocam: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reciprocam: interrupted before any image was explained", file=sys.stderr)
        return 130
    except (ray.exceptions.RayError, ConnectionError) as exc:
        cause = getattr(exc, "cause", None) or exc
        print(f"reciprocam: error: the Ray run failed: {first_line(cause)} (rows written so "
              f"far are kept in {args.out}; a re-run continues)", file=sys.stderr)
        return 2
    report(summary)
    if summary.interrupted:
        return 130
    return FAILED_EXIT_BASE + min(summary.failed, MAX_EXIT_FAILURES) if summary.failed else 0


def report(summary) -> None:
    """The failed files (first few), then one summary line: images, failures, images/s."""
    for path, reason in summary.failures:
        print(f"reciprocam: error: {path}: {reason}", file=sys.stderr)
    if summary.failed > len(summary.failures):
        print(f"reciprocam: ... and {summary.failed - len(summary.failures)} more failed files "
              f"(rows with an error in {summary.out_dir})", file=sys.stderr)
    state = "interrupted: " if summary.interrupted else ""
    print(f"reciprocam: {state}{summary.images} images in {summary.seconds:.1f} s "
          f"({summary.images_per_second:.2f} images/s): {summary.explained} explained, "
          f"{summary.failed} failed, {summary.skipped} already in {summary.out_dir}"
          + ("; re-run to finish" if summary.interrupted else ""), file=sys.stderr)
