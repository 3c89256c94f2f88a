"""The Parquet rows of ``explain-dataset``: their schema, atomic files, what a folder holds.

Part of the ``[ray]`` extra (pyarrow, Ray Data's ``Datasink``); imported only through
:mod:`reciprocam_ir.dataset`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data import Datasink
from ray.data.block import BlockAccessor

from .messages import first_line

SCHEMA = pa.schema([
    ("path", pa.string()),
    ("targets", pa.list_(pa.int64())),
    ("labels", pa.list_(pa.string())),
    ("target_scores", pa.list_(pa.float32())),
    ("saliency", pa.list_(pa.float32())),
    ("saliency_shape", pa.list_(pa.int32())),
    ("error", pa.string()),
])
"""One row per input file (the contract of ``explain-dataset``); ``error`` null when explained."""

SETTINGS_KEY = b"reciprocam"
"""Parquet schema-metadata key holding the settings a file's rows were made with."""

LOCK_NAME = ".reciprocam-dataset.lock"
TMP_PREFIX = ".part-"
"""Files being written are hidden (readers of the folder skip names starting with a dot)."""


class DatasetError(ValueError):
    """A dataset run that cannot start: bad sources, an output folder it must not touch."""


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with some of :data:`SCHEMA`'s columns) as a table of exactly that schema."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


class ParquetRowsDatasink(Datasink):
    """Writes each bundle of rows as one Parquet file, atomically (temporary name, rename).

    A file is visible under its final name only once complete, so an interrupted run leaves
    whole files only, and the next run reads their ``path`` column to skip those files.
    Write tasks run on the driver's node: the output folder is the one the user named there.
    """

    def __init__(self, out_dir: Path, settings: dict[str, Any], rows_per_file: int) -> None:
        self.out_dir = out_dir
        self.metadata = {SETTINGS_KEY: json.dumps(settings).encode()}
        self.rows_per_file = rows_per_file
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]

    @property
    def supports_distributed_writes(self) -> bool:
        return False

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks: Iterable, ctx) -> None:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        if not tables:
            return
        table = pa.concat_tables(tables)
        table = table.select(SCHEMA.names).cast(SCHEMA).replace_schema_metadata(self.metadata)
        name = f"part-{self.run_id}-{ctx.task_idx:06d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.out_dir / f"{TMP_PREFIX}{name}.tmp"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, self.out_dir / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def row_files(out_dir: Path) -> list[Path]:
    """The finished Parquet files of an output folder (temporary files are hidden)."""
    return sorted(p for p in out_dir.glob("*.parquet") if not p.name.startswith("."))


def existing_rows(out_dir: Path) -> tuple[set[str], dict[str, Any] | None]:
    """Paths that already have a row in ``out_dir``, and the settings those rows were made with.

    Refuses (DatasetError) a folder holding Parquet files of another kind.
    """
    done: set[str] = set()
    settings = None
    for path in row_files(out_dir):
        try:
            schema = pq.read_schema(path)
            table = pq.read_table(path, columns=["path"])
        except (OSError, pa.ArrowException, KeyError) as exc:
            raise DatasetError(f"{path}: not a readable explain-dataset file ({first_line(exc)})"
                               ) from None
        if schema.remove_metadata() != SCHEMA or SETTINGS_KEY not in (schema.metadata or {}):
            raise DatasetError(f"{path}: not written by explain-dataset (other columns); "
                               "choose an output folder of its own")
        settings = settings or json.loads(schema.metadata[SETTINGS_KEY])
        done.update(table.column("path").to_pylist())
    return done, settings


def run_settings(artifact: str, manifest_sha256: str, targets: Any, top_k: int
                 ) -> dict[str, Any]:
    """What a row means: the artifact (by its manifest's digest, as the loaded artifact
    recorded it) and the classes asked for.

    A re-run into the same folder must match these; backend, device, precision, batch size
    and workers may change between runs.
    """
    if targets is not None and not isinstance(targets, str):
        targets = [int(t) for t in np.atleast_1d(np.asarray(targets))]
    return {"artifact": artifact, "manifest_sha256": manifest_sha256,
            "targets": targets, "top_k": top_k if targets is None else None}


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
    return found


class OutputLock:
    """An exclusive lock on the output folder: two runs writing into it would duplicate rows.

    Holding it, the temporary files left by a killed run are removed on entry.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def __enter__(self) -> OutputLock:
        self.fh = open(self.out_dir / LOCK_NAME, "w")  # noqa: SIM115 - held until __exit__
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise DatasetError(f"{self.out_dir}: another explain-dataset run is writing here; "
                               "wait for it or choose another output folder") from None
        for stale in self.out_dir.glob(f"{TMP_PREFIX}*.tmp"):
            stale.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def count_rows(files: list[Path], shown: int) -> tuple[int, int, list[tuple[str, str]]]:
    """(explained, failed, the first ``shown`` (path, error) of the failures) in ``files``."""
    explained, failed, failures = 0, 0, []
    for path in files:
        table = pq.read_table(path, columns=["path", "error"])
        for p, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist(),
                            strict=True):
            if error is None:
                explained += 1
                continue
            failed += 1
            if len(failures) < shown:
                failures.append((p, error))
    return explained, failed, failures
