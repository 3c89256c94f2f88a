"""Where a dataset run's files live: local paths or URIs (``s3://``, ``gs://``, any fsspec
filesystem), opened through pyarrow's filesystems.

Part of the ``[ray]`` extra (pyarrow); imported only through :mod:`reciprocam_ir.dataset`.
S3 takes its endpoint and credentials from the standard AWS environment variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ...),
as pyarrow's ``S3FileSystem`` reads them; ``--filesystem-option KEY=VALUE`` passes keyword
arguments to the filesystem's constructor (``endpoint_override``, ``region``, ...).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from .artifact import MANIFEST_NAME, ArtifactError, validate_manifest
from .image_header import ImageError, read_header
from .image_reader import MinSize, check_header, decode_image, max_file_bytes
from .messages import first_line

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CACHE_ENV = "RECIPROCAM_CACHE"
"""Folder of the per-node artifact cache (default ``~/.cache/reciprocam/artifacts``)."""


class StorageError(ValueError):
    """A URI or filesystem option that cannot be used."""


def is_uri(where: str) -> bool:
    return bool(URI.match(where))


def parse_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings as keyword arguments: ``true``/``false``, numbers and JSON values
    as such, anything else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise StorageError(f"--filesystem-option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


@dataclass(frozen=True)
class Storage:
    """How to open URIs: the filesystem options of the run (picklable; each process opens its
    own filesystems, once per scheme)."""

    options: tuple[tuple[str, Any], ...] = ()
    _open: dict[str, pafs.FileSystem] = field(default_factory=dict, compare=False, repr=False)

    def __reduce__(self) -> tuple:
        return Storage, (self.options,)

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """The filesystem holding ``uri`` and the path inside it."""
        scheme, _, rest = uri.partition("://")
        scheme = scheme.lower()
        if scheme not in self._open:
            self._open[scheme] = self._make(scheme, uri)
        fs = self._open[scheme]
        if isinstance(fs, pafs.PyFileSystem):
            return fs, fs.handler.fs._strip_protocol(uri)
        return fs, rest.rstrip("/")

    def _make(self, scheme: str, uri: str) -> pafs.FileSystem:
        options = dict(self.options)
        try:
            if scheme == "s3":
                endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
                    "AWS_ENDPOINT_URL")
                if endpoint and "endpoint_override" not in options:
                    options["endpoint_override"] = endpoint  # pyarrow reads no endpoint variable
                options.setdefault("allow_delayed_open", True)  # a small file: one PUT
                return pafs.S3FileSystem(**options)
            if scheme in ("gs", "gcs"):
                return pafs.GcsFileSystem(**options)
            import fsspec

            return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme, **options)))
        except (TypeError, ValueError, ImportError, OSError) as exc:
            raise StorageError(f"{uri}: cannot open a {scheme}:// filesystem "
                               f"({first_line(exc)})") from None


def list_files(uri: str, storage: Storage, exclude: Iterable[str] = ()) -> list[str]:
    """Files under the URI ``uri`` (an object, or a prefix listed recursively), as URIs,
    sorted; names with a hidden component below ``uri`` and files under ``exclude`` (URIs)
    are left out. Refuses (StorageError) a URI that names nothing."""
    fs, path = storage.filesystem(uri)
    scheme = uri.partition("://")[0]
    skip = [e.rstrip("/") + "/" for e in exclude]
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [uri]
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{uri}: no such file or folder")
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise StorageError(f"{uri}: cannot list ({first_line(exc)})") from None
    files = []
    for item in infos:
        if item.type != pafs.FileType.File:
            continue
        below = item.path[len(path):].lstrip("/")
        if any(part.startswith(".") for part in below.split("/")):
            continue
        full = f"{scheme}://{item.path}"
        if not any(full.startswith(s) for s in skip):
            files.append(full)
    return sorted(files)


def read_image_at(uri: str, storage: Storage, max_pixels: int,
                  min_size: MinSize | None = None) -> np.ndarray:
    """Read and decode the image at ``uri`` with the header checks of a local file: at most
    the bytes its header allows are read (``min_size``: as :func:`.read_image`)."""
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        size = f.size()
        if size == 0:
            raise ImageError("empty file")

        def read(offset: int, n: int) -> bytes:  # as a local file reads: short at the end
            if offset >= size:
                return b""
            f.seek(offset)
            return f.read(min(n, size - offset))

        header = read_header(read)
        check_header(header, size, max_pixels)
        f.seek(0)
        data = f.read(max_file_bytes(header.width * header.height) + 1)
    return decode_image(data, max_pixels, min_size)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reciprocam" / "artifacts")


def fetch_artifact(uri: str, storage: Storage, manifest_sha256: str | None = None) -> Path:
    """A local copy of the artifact folder at ``uri``, fetched once per node into the cache.

    The copy is named by its manifest's sha256 and made under a lock (one fetch per node for
    all its processes); each file is checked against the manifest's sha256 as it arrives and
    the folder appears only when complete. ``manifest_sha256``: the manifest the run was
    started with; another one at ``uri`` is refused (ArtifactError).
    """
    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_stream(f"{path}/{MANIFEST_NAME}") as f:
            data = f.read()
    except OSError as exc:
        raise ArtifactError(f"{uri}: not an artifact (cannot read {MANIFEST_NAME}: "
                            f"{first_line(exc)})") from None
    digest = hashlib.sha256(data).hexdigest()
    if manifest_sha256 is not None and digest != manifest_sha256:
        raise ArtifactError(f"{uri}: its manifest changed since the run started")
    root = cache_root()
    folder = root / digest
    if (folder / MANIFEST_NAME).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / MANIFEST_NAME).is_file():
            return folder
        try:
            manifest = json.loads(data)
            validate_manifest(manifest)
        except (ValueError, ArtifactError) as exc:
            raise ArtifactError(f"{uri}: {first_line(exc)}") from None
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}.", dir=root))
        try:
            for name, expected in manifest["files"].items():
                copy_checked(fs, f"{path}/{name}", staging / name, expected, uri)
            (staging / MANIFEST_NAME).write_bytes(data)
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def copy_checked(fs: pafs.FileSystem, source: str, target: Path, sha256: str, uri: str) -> None:
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(source) as src, open(target, "wb") as dst:
            while block := src.read(1 << 20):
                digest.update(block)
                dst.write(block)
    except OSError as exc:
        raise ArtifactError(f"{uri}: cannot fetch '{target.name}' ({first_line(exc)})") from None
    if digest.hexdigest() != sha256:
        raise ArtifactError(f"{uri}: file '{target.name}' does not match its sha256")
