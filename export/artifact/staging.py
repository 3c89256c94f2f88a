"""All-or-nothing artifact writing: a staging folder next to the destination, then renames.

Re-exporting into an artifact folder replaces the artifact's own files (its manifest and
the files the manifest lists) and keeps everything else the user put there (a
``labels.txt``, a results folder). An export that dies between its renames leaves the
previous folder as a hidden ``.NAME.old-*`` beside it; the next export into NAME first puts
that previous state back (:func:`recover_interrupted`).

Torch-free, so the graph-file exporter (``.onnx`` / ``.xml``) shares it with the PyTorch path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reciprocam_ir.artifact import MANIFEST_NAME, OLD_INFIX, default_mode, interrupted_exports

from ..errors import ExportError

FORMATS = ("onnx", "ir", "both")
PARTIAL, OLD = ".partial-", OLD_INFIX


def artifact_files(folder: Path) -> set[str]:
    """The names in ``folder`` that are its artifact's: the manifest and the files it lists."""
    names = {MANIFEST_NAME}
    try:
        files = json.loads((folder / MANIFEST_NAME).read_text()).get("files")
        names.update(n for n in files if isinstance(n, str))
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # an unreadable manifest: only its own name is known to be the artifact's
    return names


def _move_entries(names: set[str], source: Path, target: Path) -> None:
    for name in sorted(names):
        (source / name).rename(target / name)


def _user_entries(folder: Path, exclude: set[str]) -> set[str]:
    return set(os.listdir(folder)) - artifact_files(folder) - exclude


def _roll_back(old: Path, staging: Path, out: Path) -> None:
    """Undo a swap stopped half way: the user's entries back into ``old``, ``old`` to ``out``."""
    if staging.is_dir():
        _move_entries(_user_entries(staging, set(os.listdir(old))), staging, old)
    old.rename(out)
    shutil.rmtree(staging, ignore_errors=True)


def recover_interrupted(out: Path) -> None:
    """Put back the folder an interrupted export left as ``.NAME.old-*`` beside ``out``.

    Died before its new artifact was in place: the old folder (with the user's entries that
    had already moved into the new one) becomes ``out`` again. Died after: only leftovers of
    the old artifact remain, removed (any other entry moves into ``out`` first).
    """
    for old in interrupted_exports(out):
        staging = out.parent / old.name[len(f".{out.name}{OLD}"):]
        try:
            if not out.exists():
                _roll_back(old, staging, out)
                continue
            _move_entries(_user_entries(old, set(os.listdir(out))), old, out)
        except OSError as exc:
            raise ExportError(f"output '{out}': an interrupted export left '{old.name}' beside "
                              f"it and it cannot be put back ({exc.strerror or exc}); move it "
                              "by hand") from None
        shutil.rmtree(old, ignore_errors=True)


def check_destination(out: Path) -> None:
    """Recover an interrupted export into ``out``, then refuse an ``out`` that is a file or a
    non-empty folder that is not an artifact."""
    if out.parent.is_dir():
        recover_interrupted(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"output '{out}' exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportError(f"output folder '{out}' exists and is not an artifact; "
                          "choose another --out or empty it")


def staging_folder(out: Path) -> Path:
    """A fresh hidden folder beside ``out`` to write the artifact into."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{PARTIAL}"))
        staging.chmod(default_mode(directory=True))
        return staging
    except OSError as exc:
        raise ExportError(f"cannot write to '{out.parent}': {exc.strerror or exc}") from None


def move_into_place(staging: Path, out: Path) -> None:
    """Make the finished staging folder ``out``, keeping the entries of an existing ``out``
    that are not its artifact's."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}{OLD}{staging.name}")
    out.rename(old)
    try:
        _move_entries(_user_entries(old, set(os.listdir(staging))), old, staging)
        staging.rename(out)
    except BaseException:
        _roll_back(old, staging, out)
        raise
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
