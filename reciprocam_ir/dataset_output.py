"""The Parquet rows of ``explain-dataset``: their schema, atomic files, what a folder holds.

Part of the ``[ray]`` extra (pyarrow); imported only through :mod:`reciprocam_ir.dataset`.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .dataset_storage import Storage, is_uri
from .messages import first_line

SCHEMA = pa.schema([
    ("path", pa.string()),
    ("targets", pa.list_(pa.int64())),
    ("labels", pa.list_(pa.string())),
    ("target_scores", pa.list_(pa.float32())),
    ("saliency", pa.list_(pa.float32())),
    ("saliency_shape", pa.list_(pa.int32())),
    ("error", pa.string()),
    ("path_bytes", pa.binary()),
])
"""One row per input file (the contract of ``explain-dataset``); ``error`` null when explained.
``path_bytes``: the path's bytes when they are not UTF-8 (``path`` then shows each such byte as
``\\xNN``), else null: every path is kept losslessly."""
SCHEMA_WITHOUT_PATH_BYTES = pa.schema(list(SCHEMA)[:-1])
"""The schema of files written before ``path_bytes`` (still read, for resuming)."""

SETTINGS_KEY = b"reciprocam"
"""Parquet schema-metadata key holding the settings a file's rows were made with."""

LOCK_NAME = ".reciprocam-dataset.lock"
TMP_PREFIX = ".part-"
"""Local files being written are hidden (readers of the folder skip names starting with a dot)."""


class DatasetError(ValueError):
    """A dataset run that cannot start: bad sources, an output folder it must not touch."""


def path_columns(ref: bytes) -> dict[str, Any]:
    """``path`` and ``path_bytes`` of a file named by the bytes ``ref`` (``os.fsencode``)."""
    try:
        return {"path": ref.decode("utf-8"), "path_bytes": None}
    except UnicodeDecodeError:
        return {"path": ref.decode("utf-8", "backslashreplace"), "path_bytes": ref}


def row_ref(path: str, path_bytes: bytes | None) -> bytes:
    """The bytes naming a row's file: the inverse of :func:`path_columns`."""
    return path_bytes if path_bytes is not None else path.encode()


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with some of :data:`SCHEMA`'s columns) as a table of exactly that schema."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def file_name(settings: dict[str, Any], refs: list[bytes]) -> str:
    """The write-once name of the file holding the rows of ``refs`` made with ``settings``:
    a retried write of the same files gives the same name, so it never duplicates rows."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for ref in refs:
        digest.update(b"\0" + ref)
    return f"part-{digest.hexdigest()[:32]}.parquet"


class OutputFolder:
    """The folder (local path or URI) of a run's Parquet files.

    Each file is written whole or not at all: locally under a hidden temporary name, then
    renamed; on object storage in one upload (an object appears only when complete), under a
    name derived from its rows (:func:`file_name`), skipped when it exists already.
    """

    def __init__(self, where: str | Path, storage: Storage) -> None:
        self.local = not is_uri(str(where))
        self.where = os.path.abspath(where) if self.local else str(where).rstrip("/")
        self.storage = storage
        if self.local:
            self.fs, self.path = pafs.LocalFileSystem(), self.where
        else:
            self.fs, self.path = storage.filesystem(self.where)

    def __reduce__(self) -> tuple:
        return OutputFolder, (self.where, self.storage)

    def __str__(self) -> str:
        return self.where

    def create(self) -> None:
        """Create the local folder; on object storage (no folders; no marker objects written)
        check that the bucket exists."""
        try:
            if self.local:
                self.fs.create_dir(self.path, recursive=True)
            elif self.fs.get_file_info(self.path.split("/")[0]).type == pafs.FileType.NotFound:
                raise DatasetError(f"{self.where}: no such bucket")
        except OSError as exc:
            raise DatasetError(f"cannot create output folder '{self.where}': "
                               f"{getattr(exc, 'strerror', None) or first_line(exc)}") from None

    def row_files(self) -> list[str]:
        """The finished Parquet files (paths inside the filesystem), sorted."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as exc:
            raise DatasetError(f"{self.where}: cannot list ({first_line(exc)})") from None
        return sorted(i.path for i in infos if i.type == pafs.FileType.File
                      and i.base_name.endswith(".parquet") and not i.base_name.startswith("."))

    def existing_rows(self) -> tuple[set[bytes], dict[str, Any] | None]:
        """The files (as bytes, :func:`row_ref`) that already have a row here, and the settings
        those rows were made with. Refuses (DatasetError) Parquet files of another kind."""
        done: set[bytes] = set()
        settings = None
        for path in self.row_files():
            try:
                schema = pq.read_schema(path, filesystem=self.fs)
                plain = schema.remove_metadata()
                columns = ["path"] + (["path_bytes"] if plain == SCHEMA else [])
                table = pq.read_table(path, columns=columns, filesystem=self.fs)
            except (OSError, pa.ArrowException, KeyError) as exc:
                raise DatasetError(f"{path}: not a readable explain-dataset file "
                                   f"({first_line(exc)})") from None
            if (plain not in (SCHEMA, SCHEMA_WITHOUT_PATH_BYTES)
                    or SETTINGS_KEY not in (schema.metadata or {})):
                raise DatasetError(f"{path}: not written by explain-dataset (other columns); "
                                   "choose an output folder of its own")
            settings = settings or json.loads(schema.metadata[SETTINGS_KEY])
            raw = (table.column("path_bytes").to_pylist() if "path_bytes" in columns
                   else [None] * table.num_rows)
            done.update(row_ref(p, b) for p, b in zip(table.column("path").to_pylist(), raw,
                                                      strict=True))
        return done, settings

    def write(self, table: pa.Table, name: str) -> bool:
        """Write ``table`` as the file ``name``, whole or not at all; False when a file of that
        name is already there (a retried write: same name, same rows)."""
        target = f"{self.path}/{name}"
        if self.local:
            tmp = Path(self.path, f"{TMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                pq.write_table(table, tmp)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return True
        if self.fs.get_file_info(target).type != pafs.FileType.NotFound:
            return False
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        with self.fs.open_output_stream(target) as out:
            out.write(sink.getvalue())
        return True


def run_settings(artifact: str, manifest_sha256: str, targets: Any, top_k: int,
                 decode: str = "exact") -> dict[str, Any]:
    """What a row means: the artifact (by its manifest's digest, as the loaded artifact
    recorded it), the classes asked for and how images were decoded.

    A re-run into the same folder must match these; backend, device, precision, batch size
    and workers may change between runs.
    """
    if targets is not None and not isinstance(targets, str):
        targets = [int(t) for t in np.atleast_1d(np.asarray(targets))]
    return {"artifact": artifact, "manifest_sha256": manifest_sha256,
            "targets": targets, "top_k": top_k if targets is None else None, "decode": decode}


def differences(recorded: dict[str, Any], asked: dict[str, Any]) -> list[tuple[str, str]]:
    """(what the rows were made with, what this run asks for), for each setting that differs."""
    def what(s: dict[str, Any]) -> str:
        return f"--top-k {s['top_k']}" if s["targets"] is None else f"classes {s['targets']}"

    found = []
    if recorded["manifest_sha256"] != asked["manifest_sha256"]:
        found.append((f"artifact {recorded['artifact']} ({recorded['manifest_sha256'][:12]})",
                      f"artifact {asked['artifact']} ({asked['manifest_sha256'][:12]})"))
    if what(recorded) != what(asked):
        found.append((what(recorded), what(asked)))
    decoded = recorded.get("decode", "exact")  # rows written before --decode existed
    if decoded != asked["decode"]:
        found.append((f"--decode {decoded}", f"--decode {asked['decode']}"))
    return found


class OutputLock:
    """An exclusive lock on a local output folder: two runs writing into it would duplicate
    rows. Holding it, the temporary files left by a killed run are removed on entry.

    Object storage has no such lock: the runs into one prefix are the user's to keep apart.
    """

    def __init__(self, out: OutputFolder) -> None:
        self.out = out

    def __enter__(self) -> OutputLock:
        if not self.out.local:
            return self
        folder = Path(self.out.path)
        self.fh = open(folder / LOCK_NAME, "w")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise DatasetError(f"{self.out}: another explain-dataset run is writing here; "
                               "wait for it or choose another output folder") from None
        for stale in folder.glob(f"{TMP_PREFIX}*.tmp"):
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.out.local:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()
