"""Start-up of ``reciprocam serve``: one KServe model per artifact on one ``ModelServer``.

Everything that can fail at start-up (ports, names, artifacts, backends, devices) is checked
before the server starts, and is refused with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys

from kserve import ModelServer
from kserve.logging import configure_logging

from ..artifact import Artifact, ArtifactError
from ..backends import BackendError
from ..messages import first_line
from .model import ExplainerModel

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Names that fit in ``/v1/models/NAME:predict`` without escaping."""


class StartupError(ValueError):
    """A server that cannot start as asked."""


def check_port(port: int, flag: str) -> None:
    """Refuse a port that is out of range or taken, as the server would bind it (all hosts)."""
    if not 1 <= port <= 65535:
        raise StartupError(f"{flag} {port}: not a port number (1..65535)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise StartupError(f"{flag} {port}: cannot listen there "
                               f"({exc.strerror or exc})") from None


def model_names(artifacts: list[Artifact], names: list[str] | None) -> list[str]:
    """One name per artifact: ``--name`` once per artifact, in order, else the manifest's."""
    if names is not None and len(names) != len(artifacts):
        raise StartupError(f"--name given {len(names)} times for {len(artifacts)} artifacts; "
                           "give it once per artifact, in the same order, or not at all")
    chosen = names if names is not None else [artifact.name for artifact in artifacts]
    for name in chosen:
        if not MODEL_NAME.fullmatch(name):
            raise StartupError(f"model name {name!r} must be letters, digits, '_', '.' or '-' "
                               "(it is part of the URL)")
    duplicates = sorted({name for name in chosen if chosen.count(name) > 1})
    if duplicates:
        raise StartupError(f"two artifacts would be served as {duplicates[0]!r}; name them "
                           "with --name, once per artifact")
    return chosen


def load_models(args: argparse.Namespace) -> list[ExplainerModel]:
    """Check the start-up options and compile one model per artifact."""
    if args.workers < 1:
        raise StartupError(f"--workers must be at least 1, got {args.workers}")
    if args.max_pixels < 1:
        raise StartupError(f"--max-pixels must be at least 1, got {args.max_pixels}")
    if args.http_port == args.grpc_port:
        raise StartupError(f"--http-port and --grpc-port are both {args.http_port}")
    check_port(args.http_port, "--http-port")
    check_port(args.grpc_port, "--grpc-port")
    artifacts = [Artifact.load(folder) for folder in args.artifacts]
    models = []
    for name, artifact in zip(model_names(artifacts, args.name), artifacts, strict=True):
        model = ExplainerModel(name, artifact, backend=args.backend, device=args.device,
                               precision=args.precision, max_pixels=args.max_pixels)
        model.load()
        models.append(model)
    return models


def run(args: argparse.Namespace) -> int:
    """Serve until stopped (SIGINT or SIGTERM); exit code 2 with one line if it cannot start."""
    configure_logging()  # KServe's handlers and format, before the models log their start-up
    try:
        models = load_models(args)
    except (ArtifactError, BackendError, StartupError, ValueError, MemoryError) as exc:
        print(f"reciprocam: error: {first_line(exc)}", file=sys.stderr)
        return 2
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port,
                workers=args.workers).start(models)
    return 0
