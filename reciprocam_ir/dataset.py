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
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from .backends import BackendError
from .dataset_output import (
    SCHEMA,
    DatasetError,
    OutputLock,
    ParquetRowsDatasink,
    count_rows,
    differences,
    existing_rows,
    row_files,
    rows_table,
    run_settings,
)
from .explainer import ReciproCAM, Targets
from .explanation import slug
from .messages import first_line
from .preprocess import DEFAULT_MAX_PIXELS, ImageError, decode_image, read_image

__all__ = ["SCHEMA", "DatasetError", "RunSummary", "explain_dataset", "list_sources",
           "write_explanations"]


# ---------------------------------------------------------------- sources


def list_sources(sources: Iterable[str | Path], exclude: Iterable[str | Path] = ()) -> list[str]:
    """Files named by ``sources`` (files, folders walked recursively, globs), absolute, sorted
    within each source, each path once and, within a source, each real file once. Hidden
    files and folders are skipped inside folders; links to folders are followed (a folder
    reached twice, e.g. by a loop, is walked once). Files inside the folders ``exclude`` (a
    run's own outputs) are left out.

    A source that names nothing is refused (:class:`DatasetError`) before any work starts.
    """
    skip = Excluded(exclude)
    files: dict[str, None] = {}
    for source in sources:
        source = str(source)
        seen: set[tuple[int, int]] = set()
        path = Path(source)
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
    """What every actor needs to build its ReciproCAM and explain a batch."""

    artifact: str
    targets: Targets = None
    top_k: int = 1
    backend: str | None = None
    device: str | None = None
    precision: str = "auto"
    batch_size: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    overlays: str | None = None

    def explainer(self) -> ReciproCAM:
        return ReciproCAM(self.artifact, backend=self.backend, device=self.device,
                          precision=self.precision, batch_size=self.batch_size,
                          max_pixels=self.max_pixels)


class ExplainBatch:
    """Ray Data callable class: each actor compiles one ReciproCAM, then explains batches.

    A batch (pyarrow) holds ``path`` and, optionally, ``bytes`` (the encoded image, as
    ``ray.data.read_binary_files(..., include_paths=True)`` gives it); without ``bytes`` the
    actor reads the file at ``path``. Returns one :data:`SCHEMA` row per input row.
    """

    def __init__(self, options: ExplainOptions) -> None:
        self.options = options
        self.cam = options.explainer()

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths = [str(p) for p in batch.column("path").to_pylist()]
        blobs = (batch.column("bytes").to_pylist() if "bytes" in batch.column_names
                 else [None] * len(paths))
        rows: list[dict[str, Any]] = [{"path": p} for p in paths]
        images = []
        for i, (path, data) in enumerate(zip(paths, blobs, strict=True)):
            try:
                rgb = (read_image(path, self.cam.max_pixels) if data is None
                       else decode_image(data, self.cam.max_pixels))
            except ImageError as exc:
                rows[i]["error"] = str(exc)
            except OSError as exc:
                rows[i]["error"] = f"cannot read ({exc.strerror or first_line(exc)})"
            else:
                images.append((i, rgb))
        self._explain(images, rows)
        return rows_table(rows)

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
) -> ray.data.Dataset:
    """A lazy Ray Dataset of explanation rows (:data:`SCHEMA`), one per row of ``source``.

    ``source``: a ``ray.data.Dataset`` with a ``path`` column (string) and optionally a
    ``bytes`` column (the encoded image; e.g. ``ray.data.read_binary_files(paths,
    include_paths=True)``), or a list of files / folders / globs (:func:`list_sources`).
    Each of ``workers`` actors (``cpus_per_worker`` CPUs reserved each) compiles one
    :class:`ReciproCAM` and explains ``batch_size`` images per call; options are checked here,
    before anything runs. Consume the result as any Dataset (``write_parquet``,
    ``iter_rows``, ...), or use :func:`write_explanations` for resumable atomic output.

    A ``source`` read by Ray tasks (``read_binary_files``) needs CPUs beyond
    ``workers * cpus_per_worker`` for those tasks: actors holding every CPU starve the reads.
    """
    check_pool(workers, cpus_per_worker)
    files = None if isinstance(source, ray.data.Dataset) else list_sources(source)
    options, _ = checked_options(artifact, targets, top_k, backend, device, precision,
                                 batch_size, max_pixels, overlays)
    if files is not None:
        source = ray.data.from_items([{"path": p} for p in files])
    return rows_of(source, options, workers, cpus_per_worker)


def check_pool(workers: int, cpus_per_worker: float) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer of at least 1, got {workers!r}")
    if not cpus_per_worker > 0:
        raise ValueError(f"cpus_per_worker must be positive, got {cpus_per_worker!r}")


def rows_of(source: ray.data.Dataset, options: ExplainOptions, workers: int,
            cpus_per_worker: float) -> ray.data.Dataset:
    return source.map_batches(
        ExplainBatch,
        fn_constructor_kwargs={"options": options},
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
    )


def checked_options(artifact: str | Path, targets: Targets, top_k: int, backend: str | None,
                    device: str | None, precision: str, batch_size: int, max_pixels: int,
                    overlays: str | Path | None) -> tuple[ExplainOptions, str]:
    """Check every option by building one ReciproCAM here, before Ray starts anything; also
    the sha256 of the manifest it loaded.

    Raises ArtifactError, BackendError, ValueError (one line each) for a bad option.
    """
    options = ExplainOptions(str(Path(artifact).resolve()), targets, top_k, backend, device,
                             precision, batch_size, max_pixels,
                             str(Path(overlays).resolve()) if overlays is not None else None)
    cam = options.explainer()
    cam.check_targets(targets, top_k)
    if overlays is not None:
        try:
            Path(overlays).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"cannot create overlay folder '{overlays}': {exc.strerror}"
                               ) from None
    return options, cam.artifact.manifest_sha256


@dataclass
class RunSummary:
    """What :func:`write_explanations` did."""

    out_dir: Path
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

    @property
    def images(self) -> int:
        return self.explained + self.failed

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


FAILURES_SHOWN = 20


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
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Explain the files named by ``sources`` that have no row in ``out_dir`` yet; write rows.

    Rows go to Parquet files ``out_dir/part-*.parquet`` (:data:`SCHEMA`), ``rows_per_file``
    rows each, each written atomically; the run's settings are stored in every file's
    metadata and a re-run with other settings (artifact, classes, top-k) is refused.
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
    files = list_sources(sources, exclude=[out_dir] + ([overlays] if overlays else []))
    options, manifest_sha256 = checked_options(artifact, targets, top_k, backend, device,
                                               precision, batch_size, max_pixels, overlays)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create output folder '{out}': {exc.strerror}") from None
    settings = run_settings(options.artifact, manifest_sha256, options.targets, options.top_k)
    with OutputLock(out):
        done, recorded = existing_rows(out)
        changed = differences(recorded, settings) if recorded is not None else []
        if changed:
            raise DatasetError(
                f"{out}: its rows were made with {', '.join(old for old, _ in changed)}, this "
                f"run asks for {', '.join(new for _, new in changed)}; use the same options "
                "or another output folder")
        before = set(row_files(out))
        todo = [f for f in files if f not in done]
        summary = RunSummary(out, len(files), len(files) - len(todo))
        todo = todo[:limit] if limit is not None else todo
        if summary.skipped:
            log(f"reciprocam: {summary.skipped} of {len(files)} files already have a row in "
                f"{out}, skipped")
        if not todo:
            return summary
        connect(address)
        sink = ParquetRowsDatasink(out, settings, rows_per_file)
        rows = rows_of(ray.data.from_items([{"path": p} for p in todo]), options, workers,
                       cpus_per_worker)
        start = time.perf_counter()
        try:
            rows.write_datasink(sink, ray_remote_args={"num_cpus": 0}, concurrency=1)
        except KeyboardInterrupt:
            summary.interrupted = True
        summary.seconds = time.perf_counter() - start
        summary.explained, summary.failed, summary.failures = count_rows(
            [p for p in row_files(out) if p not in before], FAILURES_SHOWN)
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
