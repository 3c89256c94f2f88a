"""Start-up of ``reciprocam serve``: one KServe model per artifact on one ``ModelServer``.

Everything that can fail at start-up (ports, names, artifacts, backends, devices) is checked
before the server starts, and is refused with one line and exit code 2.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys

from kserve.logging import configure_logging

from ..artifact import Artifact, ArtifactError
from ..backends import BackendError
from ..cli import mask_contradiction
from ..messages import first_line
from .listen import HostModelServer
from .model import ExplainerModel

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Names that fit in ``/v1/models/NAME:predict`` without escaping."""


class StartupError(ValueError):
    """A server that cannot start as asked."""


def check_port(host: str, port: int, flag: str) -> None:
    """Refuse a port that is out of range or taken on ``host``, as the server would bind it."""
    if not 1 <= port <= 65535:
        raise StartupError(f"{flag} {port}: not a port number (1..65535)")
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as exc:
        raise StartupError(f"--host {host}: not an address of this machine "
                           f"({getattr(exc, 'strerror', None) or exc})") from None
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartupError(f"{flag} {port}: cannot listen there on {host} "
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
    for flag, value in (("--workers", args.workers), ("--max-pixels", args.max_pixels),
                        ("--max-targets", args.max_targets),
                        ("--request-pixels", args.request_pixels),
                        ("--process-pixels", args.process_pixels),
                        ("--decode-threads", args.decode_threads)):
        if value < 1:
            raise StartupError(f"{flag} must be at least 1, got {value}")
    if args.process_pixels < args.request_pixels:
        raise StartupError(f"--process-pixels {args.process_pixels} is below --request-pixels "
                           f"{args.request_pixels}: no request of the largest size could run")
    problem = mask_contradiction(args)
    if problem:
        raise StartupError(problem)
    if args.http_port == args.grpc_port:
        raise StartupError(f"--http-port and --grpc-port are both {args.http_port}")
    check_port(args.host, args.http_port, "--http-port")
    check_port(args.host, args.grpc_port, "--grpc-port")
    artifacts = [Artifact.load(folder) for folder in args.artifacts]
    models = []
    for name, artifact in zip(model_names(artifacts, args.name), artifacts, strict=True):
        model = ExplainerModel(name, artifact, backend=args.backend, device=args.device,
                               precision=args.precision, max_pixels=args.max_pixels,
                               mask=args.mask, mask_sigma=args.mask_sigma,
                               mask_strength=args.mask_strength, scores=args.scores,
                               max_targets=args.max_targets,
                               request_pixels=args.request_pixels,
                               process_pixels=args.process_pixels,
                               decode_threads=args.decode_threads,
                               decode=args.decode)
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
    HostModelServer(args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                    workers=args.workers).start(models)
    return 0
