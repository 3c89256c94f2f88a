"""Class names: from a ``--labels`` file, or from the metadata a converter left in the graph.

Converters store names as text: one per line (PaddleOCR's ``character``), a JSON list, or a
Python dict/list literal (``{0: 'cat', 1: 'dog'}`` under ``names``, as YOLO exporters write).
Text is parsed with :mod:`json` and :func:`ast.literal_eval`, never evaluated.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ExportError

PREFERRED_KEYS = ("labels", "names", "classes", "class_names", "categories", "character")
"""Metadata keys read first, in this order; any other key is tried after them."""


def _as_names(value: Any) -> list[str] | None:
    """A list of names, or a dict {0: name, 1: name, ...} in index order; else None."""
    if isinstance(value, dict):
        try:
            by_index = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            return None
        if sorted(by_index) != list(range(len(by_index))):
            return None
        value = [by_index[i] for i in range(len(by_index))]
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    return None


def parse_names(text: str) -> list[str] | None:
    """Names from a JSON list, a Python list/dict literal, or one name per line."""
    text = text.strip()
    if not text:
        return None
    if text[0] in "[{(":
        for parse in (json.loads, ast.literal_eval):
            try:
                names = _as_names(parse(text))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if names is not None:
                return names
    lines = [line.strip() for line in text.splitlines()]
    return lines if len(lines) > 1 and all(lines) else None


def names_from_metadata(metadata: Mapping[str, str], num_classes: int
                        ) -> tuple[str, list[str]] | None:
    """The first metadata entry holding exactly ``num_classes`` names, with its key.

    Keys are tried in :data:`PREFERRED_KEYS` order (matched on the last ``/`` part), then
    in the graph's order.
    """
    def rank(key: str) -> int:
        short = key.rsplit("/", 1)[-1].lower()
        return PREFERRED_KEYS.index(short) if short in PREFERRED_KEYS else len(PREFERRED_KEYS)

    for key in sorted(metadata, key=rank):
        names = parse_names(metadata[key])
        if names is not None and len(names) == num_classes:
            return key, names
    return None


def read_labels_file(path: str | Path) -> list[str]:
    """The names in a ``--labels`` file: one per line, or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExportError(f"labels file '{path}' not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ExportError(f"labels file '{path}' cannot be read ({reason})") from None
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            names = _as_names(json.loads(stripped))
        except ValueError:
            names = None  # not JSON: a first name such as "[background]"
        else:
            if names is None:
                raise ExportError(f"labels file '{path}': expected a JSON list of names")
            return names
    names = [line.strip() for line in stripped.splitlines()]
    if not stripped or not all(names):
        raise ExportError(f"labels file '{path}': expected one name per line "
                          f"({'empty file' if not stripped else 'found an empty line'})")
    return names


def check_count(names: list[str], num_classes: int, path: str | Path) -> list[str]:
    """``names`` when there is one per class; else a one-line error naming the file."""
    if len(names) != num_classes:
        raise ExportError(f"labels file '{path}' has {len(names)} names; the model has "
                          f"{num_classes} classes")
    return names


def graph_labels(metadata: Mapping[str, str], num_classes: int, labels_file: str | Path | None,
                 file_names: list[str] | None, log: Callable[[str], None]) -> list[str] | None:
    """The manifest's labels: the ``--labels`` file's, else names found in the graph."""
    if file_names is not None:
        return check_count(file_names, num_classes, labels_file or "")
    found = names_from_metadata(metadata, num_classes)
    if found is None:
        return None
    log(f"class names from the graph's metadata '{found[0]}'")
    return found[1]
