"""``reciprocam serve``: explanations over HTTP and gRPC on KServe's model server.

KServe comes with the ``[serve]`` extra and is imported only here, when the command runs:
``import reciprocam_ir`` never imports it.
"""

from __future__ import annotations

import argparse
import sys

from ..messages import first_line

SERVE_EXTRA = "pip install reciprocam-ir[serve]"


def serve(args: argparse.Namespace) -> int:
    """Run ``reciprocam serve`` (exit code 2 with one line when KServe is not installed)."""
    # kserve.model_server parses sys.argv when imported; ours is not meant for it
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        from .server import run
    except ImportError as exc:
        print(f"reciprocam: error: serve needs KServe ({first_line(exc)}): {SERVE_EXTRA}",
              file=sys.stderr)
        return 2
    finally:
        sys.argv = argv
    return run(args)
