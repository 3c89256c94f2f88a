"""All-or-nothing artifact writing: a staging folder next to the destination, then a rename.

Torch-free, so the graph-file exporter (``.onnx`` / ``.xml``) shares it with the PyTorch path.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reciprocam_ir.artifact import MANIFEST_NAME, default_mode

from .errors import ExportError

FORMATS = ("onnx", "ir", "both")


def check_destination(out: Path) -> None:
    """Refuse an ``out`` that is a file or a non-empty folder that is not an artifact."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportError(f"output folder '{out}' exists and is not an artifact; "
                          "choose another --out or empty it")


def staging_folder(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` to write the artifact into."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        staging.chmod(default_mode(directory=True))
        return staging
    except OSError as exc:
        raise ExportError(f"cannot write to '{out.parent}': {exc.strerror or exc}") from None


def move_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` (if any) by the finished staging folder."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{staging.name}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder that becomes ``out`` when the block succeeds and vanishes otherwise."""
    staging = staging_folder(out)
    try:
        yield staging
        move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
