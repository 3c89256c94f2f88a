"""Explain a whole dataset on Ray Data: one compiled ReciproCAM per actor, rows to Parquet.

Imported only by ``reciprocam explain-dataset`` and by users who call it: it needs the
``[ray]`` extra (``ray[data]``, which brings pyarrow). ``import reciprocam_ir`` never loads it.

Two entry points:

- :func:`explain_dataset` maps a Ray Dataset (or a list of files) to a lazy Dataset of
  explanation rows, for users who already hold a ``ray.data.Dataset``;
- :func:`write_explanations` writes those rows as Parquet files under an output folder,
  resumably: a re-run explains only the files that have no row yet.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from .backends import BackendError
from .dataset_output import (
    SCHEMA,
    SETTINGS_KEY,
    DatasetError,
    OutputFolder,
    OutputLock,
    differences,
    file_name,
    path_columns,
    rows_table,
    run_settings,
)
from .dataset_storage import (
    Storage,
    StorageError,
    fetch_artifact,
    is_uri,
    list_files,
    read_image_at,
)
from .explainer import ReciproCAM, Targets
from .explanation import slug
from .messages import first_line
from .preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_image, read_image

__all__ = ["SCHEMA", "DatasetError", "RunSummary", "explain_dataset", "list_sources",
           "write_explanations"]


# ---------------------------------------------------------------- sources


def list_sources(sources: Iterable[str | Path], exclude: Iterable[str | Path] = (),
                 storage: Storage | None = None) -> list[str]:
    """Files named by ``sources`` (files, folders walked recursively, globs), absolute, sorted
    within each source, each path once and, within a source, each real file once. Hidden
    files and folders are skipped inside folders; links to folders are followed (a folder
    reached twice, e.g. by a loop, is walked once). Files inside the folders ``exclude`` (a
    run's own outputs) are left out. A URI (``s3://bucket/images/``) names an object or every
    object under that prefix, listed by its pyarrow filesystem (``storage``), as URIs.

    A source that names nothing is refused (:class:`DatasetError`) before any work starts.
    """
    exclude = [str(e) for e in exclude]
    skip = Excluded(e for e in exclude if not is_uri(e))
    files: dict[str, None] = {}
    for source in sources:
        source = str(source)
        seen: set[tuple[int, int]] = set()
        path = Path(source)
        if is_uri(source):
            try:
                found = list_files(source, storage or Storage(), [e for e in exclude if is_uri(e)])
            except StorageError as exc:
                raise DatasetError(str(exc)) from None
            if not found:
                raise DatasetError(f"{source}: names no files")
            files.update((f, None) for f in found)
            continue
        if path.is_dir():
            found = walk(path, seen)
        elif path.exists():
            found = [path]
        elif glob.has_magic(source):
            found = [f for match in sorted(glob.glob(source, recursive=True))
                     for f in (walk(Path(match), seen) if Path(match).is_dir()
                               else [Path(match)])]
        else:
            raise DatasetError(f"{source}: no such file or folder")
        found = [f for f in found if not skip(f)]
        if not found:
            raise DatasetError(f"{source}: names no files")
        files.update((os.path.abspath(f), None) for f in found)
    return list(files)


def walk(folder: Path, seen: set[tuple[int, int]]) -> list[Path]:
    """Non-hidden files under ``folder``, recursively (following links to folders), in sorted
    order; ``seen`` holds the (device, inode) of every folder and file already listed, so that
    a loop ends and a file reached by two routes is listed once."""
    found: list[Path] = []
    try:
        info = os.stat(folder)
    except OSError:
        return found
    if (info.st_dev, info.st_ino) in seen:
        return found
    seen.add((info.st_dev, info.st_ino))
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return found
    folders = []
    for entry in entries:
        try:
            if entry.is_dir():
                folders.append(entry)
                continue
            key = ((info.st_dev, entry.inode()) if not entry.is_symlink()
                   else (lambda s: (s.st_dev, s.st_ino))(os.stat(entry.path)))
        except OSError:  # a dangling link: listed, so that its row says why
            key = None
        if key is None or key not in seen:
            if key is not None:
                seen.add(key)
            found.append(Path(entry.path))
    for entry in folders:
        found.extend(walk(Path(entry.path), seen))
    return found


class Excluded:
    """Whether a file lies inside one of some folders (compared by real path, so that a
    link to an output folder is recognised too); one realpath per distinct parent folder."""

    def __init__(self, folders: Iterable[str | Path]) -> None:
        self.roots = [os.path.realpath(f) for f in folders]
        self.parents: dict[str, bool] = {}

    def __call__(self, file: Path) -> bool:
        if not self.roots:
            return False
        parent = os.path.dirname(os.path.abspath(file))
        if parent not in self.parents:
            real = os.path.realpath(parent)
            self.parents[parent] = any(real == r or real.startswith(r.rstrip(os.sep) + os.sep)
                                       for r in self.roots)
        return self.parents[parent]


# ---------------------------------------------------------------- the actor


@dataclass(frozen=True)
class ExplainOptions:
    """What every actor needs to build its ReciproCAM and explain a batch.

    ``artifact``: a local folder, or a URI that each node fetches once into its cache
    (:func:`fetch_artifact`), checked against ``manifest_sha256``, the manifest the driver saw.
    """

    artifact: str
    targets: Targets = None
    top_k: int = 1
    backend: str | None = None
    device: str | None = None
    precision: str = "auto"
    batch_size: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    overlays: str | None = None
    decode: str = "exact"
    storage: Storage = Storage()
    manifest_sha256: str | None = None

    def artifact_folder(self) -> str:
        if not is_uri(self.artifact):
            return self.artifact
        return str(fetch_artifact(self.artifact, self.storage, self.manifest_sha256))

    def explainer(self) -> ReciproCAM:
        return ReciproCAM(self.artifact_folder(), backend=self.backend, device=self.device,
                          precision=self.precision, batch_size=self.batch_size,
                          max_pixels=self.max_pixels, decode=self.decode)


class ExplainBatch:
    """Ray Data callable class: each actor compiles one ReciproCAM, then explains batches.

    A batch (pyarrow) holds ``path`` and, optionally, ``bytes`` (the encoded image, as
    ``ray.data.read_binary_files(..., include_paths=True)`` gives it); without ``bytes`` the
    actor reads the file at ``path`` (a local path or a URI). Returns one :data:`SCHEMA` row
    per input row.
    """

    def __init__(self, options: ExplainOptions) -> None:
        self.options = options
        self.cam = options.explainer()

    def __call__(self, batch: pa.Table) -> pa.Table:
        refs = ([bytes(p) for p in batch.column("file").to_pylist()] if "file" in
                batch.column_names else [os.fsencode(p) for p in batch.column("path").to_pylist()])
        blobs = (batch.column("bytes").to_pylist() if "bytes" in batch.column_names
                 else [None] * len(refs))
        return rows_table(self.rows(refs, blobs))

    def rows(self, refs: list[bytes], blobs: Sequence[bytes | None] | None = None
             ) -> list[dict[str, Any]]:
        """One row per file named by ``refs`` (``os.fsencode`` of a path or URI), read unless
        its encoded bytes are given in ``blobs``."""
        blobs = blobs if blobs is not None else [None] * len(refs)
        rows: list[dict[str, Any]] = [path_columns(ref) for ref in refs]
        images = []
        for i, (ref, data) in enumerate(zip(refs, blobs, strict=True)):
            try:
                rgb = (decode_image(data, self.cam.max_pixels, self.cam.min_decode_size)
                       if data is not None else self.read(os.fsdecode(ref)))
            except ImageError as exc:
                rows[i]["error"] = str(exc)
            except OSError as exc:
                rows[i]["error"] = f"cannot read ({exc.strerror or first_line(exc)})"
            else:
                images.append((i, rgb))
        self._explain(images, rows)
        return rows

    def read(self, where: str) -> np.ndarray:
        shrink = self.cam.min_decode_size
        if is_uri(where):
            return read_image_at(where, self.options.storage, self.cam.max_pixels, shrink)
        return read_image(where, self.cam.max_pixels, shrink)

    def _explain(self, images: list[tuple[int, np.ndarray]], rows: list[dict]) -> None:
        """Explain the decoded images together; a batch that fails is retried one by one."""
        indices = [i for i, _ in images]
        names = [overlay_stem(rows[i]["path"]) for i in indices]
        for group, exp in self.cam.explain_isolating(
                [rgb for _, rgb in images], self.options.targets, self.options.top_k, names,
                errors=(FloatingPointError, BackendError, RuntimeError, ValueError)):
            if isinstance(exp, Exception):
                rows[indices[group[0]]]["error"] = first_line(exp).removeprefix(
                    f"{names[group[0]]}: ")
                continue
            for j, i in enumerate(indices[k] for k in group):
                targets = exp.targets[j].astype(np.int64)
                rows[i].update(
                    targets=targets,
                    labels=[exp.label(int(c)) for c in targets] if exp.labels else None,
                    target_scores=exp.scores[j, targets].astype(np.float32),
                    saliency=exp.saliency[j].astype(np.float32).ravel(),
                    saliency_shape=np.asarray(exp.saliency[j].shape, np.int32),
                )
                if self.options.overlays:
                    exp.save_one(j, Path(self.options.overlays))


class WriteRows(ExplainBatch):
    """Ray Data callable class: explains the files of a batch of file lists, each list into
    one Parquet file written by this actor, wherever it runs (in parallel, never through
    the driver). Returns one small summary row per file: what the driver reports."""

    def __init__(self, options: ExplainOptions, out: OutputFolder, settings: dict[str, Any]
                 ) -> None:
        super().__init__(options)
        self.out = out
        self.settings = settings
        self.metadata = {SETTINGS_KEY: json.dumps(settings).encode()}

    def __call__(self, batch: pa.Table) -> pa.Table:
        summaries = []
        for files in batch.column("files").to_pylist():
            refs = [bytes(f) for f in files]
            rows = [row for start in range(0, len(refs), self.options.batch_size)
                    for row in self.rows(refs[start:start + self.options.batch_size])]
            self.out.write(rows_table(rows).replace_schema_metadata(self.metadata),
                           file_name(self.settings, refs))
            failed = [(r["path"], r["error"]) for r in rows if r.get("error") is not None]
            summaries.append({"explained": len(rows) - len(failed), "failed": len(failed),
                              "failed_paths": [p for p, _ in failed[:FAILURES_SHOWN]],
                              "failed_errors": [e for _, e in failed[:FAILURES_SHOWN]],
                              "node": ray.get_runtime_context().get_node_id()})
        return pa.Table.from_pylist(summaries, schema=SUMMARY_SCHEMA)


SUMMARY_SCHEMA = pa.schema([("explained", pa.int64()), ("failed", pa.int64()),
                            ("failed_paths", pa.list_(pa.string())),
                            ("failed_errors", pa.list_(pa.string())), ("node", pa.string())])
FAILURES_SHOWN = 20
"""The failed files a run names (the rest are counted): per file written, and in all."""


def overlay_stem(path: str) -> str:
    """File-name stem for the overlays of ``path``: its stem plus 8 hex digits of the full
    path, so that ``a/x.jpg`` and ``b/x.jpg`` do not overwrite each other's overlays."""
    return f"{slug(Path(path).stem)}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- Ray Data pipeline


def explain_dataset(
    artifact: str | Path,
    source: ray.data.Dataset | Sequence[str | Path],
    *,
    targets: Targets = None,
    top_k: int = 1,
    backend: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    batch_size: int = 8,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    overlays: str | Path | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    filesystem_options: dict[str, Any] | None = None,
    decode: str = "exact",
) -> ray.data.Dataset:
    """A lazy Ray Dataset of explanation rows (:data:`SCHEMA`), one per row of ``source``.

    ``source``: a ``ray.data.Dataset`` with a ``path`` column (string) and optionally a
    ``bytes`` column (the encoded image; e.g. ``ray.data.read_binary_files(paths,
    include_paths=True)``), or a list of files / folders / globs / URIs (:func:`list_sources`).
    Each of ``workers`` actors (``cpus_per_worker`` CPUs reserved each) compiles one
    :class:`ReciproCAM` and explains ``batch_size`` images per call; options are checked here,
    before anything runs. Consume the result as any Dataset (``write_parquet``,
    ``iter_rows``, ...), or use :func:`write_explanations` for resumable atomic output.
    ``filesystem_options``: keyword arguments of the filesystem that opens URIs. ``decode``:
    as :class:`ReciproCAM`'s ("reduced": JPEGs shrink on load).

    A ``source`` read by Ray tasks (``read_binary_files``) needs CPUs beyond
    ``workers * cpus_per_worker`` for those tasks: actors holding every CPU starve the reads.
    """
    check_pool(workers, cpus_per_worker)
    storage = Storage(tuple((filesystem_options or {}).items()))
    files = (None if isinstance(source, ray.data.Dataset)
             else list_sources(source, storage=storage))
    options = checked_options(artifact, targets, top_k, backend, device, precision,
                              batch_size, max_pixels, overlays, storage, decode)
    if files is not None:
        source = ray.data.from_items([{"file": os.fsencode(p)} for p in files])
    return source.map_batches(
        ExplainBatch, fn_constructor_kwargs={"options": options}, batch_size=batch_size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker)


def check_pool(workers: int, cpus_per_worker: float) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer of at least 1, got {workers!r}")
    if not cpus_per_worker > 0:
        raise ValueError(f"cpus_per_worker must be positive, got {cpus_per_worker!r}")


def checked_options(artifact: str | Path, targets: Targets, top_k: int, backend: str | None,
                    device: str | None, precision: str, batch_size: int, max_pixels: int,
                    overlays: str | Path | None, storage: Storage,
                    decode: str = "exact") -> ExplainOptions:
    """Check every option by building one ReciproCAM here, before Ray starts anything (an
    artifact URI is fetched into this node's cache for it); the options then name the
    manifest it loaded.

    Raises ArtifactError, BackendError, ValueError (one line each) for a bad option.
    """
    artifact = str(artifact)
    if overlays is not None and is_uri(str(overlays)):
        raise DatasetError(f"--overlays {overlays}: must be a folder every node can write, "
                           "not a URI")
    options = ExplainOptions(artifact if is_uri(artifact) else str(Path(artifact).resolve()),
                             targets, top_k, backend, device, precision, batch_size, max_pixels,
                             str(Path(overlays).resolve()) if overlays is not None else None,
                             decode=decode, storage=storage)
    cam = options.explainer()
    cam.check_targets(targets, top_k)
    if overlays is not None:
        try:
            Path(overlays).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create overlay folder '{overlays}': {exc.strerror}"
                               ) from None
    return replace(options, manifest_sha256=cam.artifact.manifest_sha256)


@dataclass
class RunSummary:
    """What :func:`write_explanations` did."""

    out_dir: str
    files: int
    """Input files named by the sources."""
    skipped: int
    """Of those, files that already had a row in ``out_dir``."""
    explained: int = 0
    failed: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(path, error) of this run's failed files, the first :data:`FAILURES_SHOWN` of them."""
    per_node: dict[str, int] = field(default_factory=dict)
    """Files explained or failed by the actors of each Ray node (by node id)."""
    driver_bytes: int = 0
    """Bytes of the summary rows the driver received (the rows themselves never come back)."""

    @property
    def images(self) -> int:
        return self.explained + self.failed

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def add(self, written: dict[str, Any]) -> None:
        """Count one file's summary row (:data:`SUMMARY_SCHEMA`)."""
        self.explained += written["explained"]
        self.failed += written["failed"]
        node = written["node"]
        self.per_node[node] = self.per_node.get(node, 0) + written["explained"] + written["failed"]
        room = FAILURES_SHOWN - len(self.failures)
        self.failures.extend(list(zip(written["failed_paths"], written["failed_errors"],
                                      strict=True))[:max(room, 0)])


def write_explanations(
    artifact: str | Path,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    targets: Targets = None,
    top_k: int = 1,
    backend: str | None = None,
    device: str | None = None,
    precision: str = "auto",
    batch_size: int = 8,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    overlays: str | Path | None = None,
    limit: int | None = None,
    rows_per_file: int = 1000,
    address: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    filesystem_options: dict[str, Any] | None = None,
    decode: str = "exact",
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Explain the files named by ``sources`` that have no row in ``out_dir`` yet; write rows.

    ``artifact``, ``sources`` and ``out_dir`` may be URIs (``s3://...``; ``filesystem_options``
    are the filesystem's keyword arguments). Rows go to Parquet files ``out_dir/part-*.parquet``
    (:data:`SCHEMA`), exactly ``rows_per_file`` rows each but the last, each written whole by
    the actor that explained it, under a name derived from its files and the settings (a
    retried write never duplicates rows); the run's settings are stored in every file's
    metadata and a re-run with other settings (artifact, classes, top-k, ``decode``) is
    refused. ``decode``: as :class:`ReciproCAM`'s ("reduced": JPEGs shrink on load).
    ``limit``: explain at most that many of the files still to do. Ray is started locally,
    or joins the cluster at ``address`` (or ``RAY_ADDRESS``), unless already initialised.
    ``log`` gets the progress lines of the driver. Raises ArtifactError, BackendError,
    ValueError (DatasetError included) before anything runs; Ctrl-C stops the run with
    the rows written so far kept (``interrupted`` in the summary).
    """
    check_pool(workers, cpus_per_worker)
    if rows_per_file < 1:
        raise ValueError(f"rows_per_file must be at least 1, got {rows_per_file}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more, got {limit}")
    storage = Storage(tuple((filesystem_options or {}).items()))
    try:
        out = OutputFolder(out_dir, storage)
    except StorageError as exc:
        raise DatasetError(str(exc)) from None
    files = list_sources(sources, [out.where] + ([str(overlays)] if overlays else []), storage)
    options = checked_options(artifact, targets, top_k, backend, device, precision,
                              batch_size, max_pixels, overlays, storage, decode)
    out.create()
    settings = run_settings(options.artifact, options.manifest_sha256, options.targets,
                            options.top_k, options.decode)
    with OutputLock(out):
        done, recorded = out.existing_rows()
        changed = differences(recorded, settings) if recorded is not None else []
        if changed:
            raise DatasetError(
                f"{out}: its rows were made with {', '.join(old for old, _ in changed)}, this "
                f"run asks for {', '.join(new for _, new in changed)}; use the same options "
                "or another output folder")
        todo = [f for f in (os.fsencode(f) for f in files) if f not in done]
        summary = RunSummary(str(out), len(files), len(files) - len(todo))
        todo = todo[:limit] if limit is not None else todo
        if summary.skipped:
            log(f"reciprocam: {summary.skipped} of {len(files)} files already have a row in "
                f"{out}, skipped")
        if not todo:
            return summary
        connect(address)
        chunks = [{"files": todo[i:i + rows_per_file]}
                  for i in range(0, len(todo), rows_per_file)]
        written = ray.data.from_items(chunks, override_num_blocks=len(chunks)).map_batches(
            WriteRows, fn_constructor_kwargs={"options": options, "out": out,
                                              "settings": settings},
            batch_size=1, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=min(workers, len(chunks))),
            num_cpus=cpus_per_worker)  # no more actors (each compiles) than pieces
        start = time.perf_counter()
        try:
            for batch in written.iter_batches(batch_size=None, batch_format="pyarrow"):
                summary.driver_bytes += batch.nbytes
                for row in batch.to_pylist():
                    summary.add(row)
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.seconds = time.perf_counter() - start
    return summary


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start Ray embedded here (no
    dashboard), never an unnamed running cluster; reuse a session already initialised."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
