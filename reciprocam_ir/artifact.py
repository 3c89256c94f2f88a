"""The artifact folder: manifest schema, checksums, and the graph files it names.

This module is the one place that knows the manifest's layout; the exporter writes
through :func:`write_manifest` and the runtime reads through :class:`Artifact`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .masking import DEFAULT_MASK, MASK_KINDS
from .preprocess import Preprocessing
from .saliency import SCORE_KINDS

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
GRAPH_ROLES = ("f", "g", "g_pooled", "explain")
GRAPH_FORMATS = ("onnx", "ir")
GRAPH_SUFFIXES = {"onnx": ".onnx", "ir": ".xml"}
"""The file suffix each graph format must have (any case)."""
MAX_MANIFEST_BYTES = 16 << 20
"""A manifest above this size is refused before parsing (the labels of 21k classes are 0.5 MB)."""
INPUT_NAME, FEATURE_NAME, POOLED_NAME, OUTPUT_NAME = "input", "feature", "pooled", "scores"
MASKS_NAME = "masks"
"""The token tail's second input: mask rows (M, N), one weight per patch token."""
TASKS = ("classify", "detect")
"""``task``: a classifier (absent in manifests written before detectors), or a detector
(DESIGN.md, "Detection artifacts")."""
FEATURE_KINDS = ("map", "tokens")
"""``feature.kind``: a (C, h, w) map (CNNs; the default), or (T, D) tokens on an h×w grid."""
TOKEN_TAILS = ("class_token", "sequences")
"""How ``g`` of a token artifact scores masked copies: the class-token shortcut of the last
block (N vectors), or all masked sequences through the rest of the model."""
TARGETS_NAME, SALIENCY_NAME = "targets", "saliency"
"""The explain graph's outputs beside ``scores`` (DESIGN.md, "Explain graph")."""
EXPLAIN_KEYS = ("top_k", "mask", "mask_sigma", "mask_strength", "scores")
"""The ``explain`` section: what the explain graph computes (K, and the map it is)."""
EXPLAIN_OPTIONAL_KEYS = ("mask_strength",)
"""Keys of the ``explain`` section that manifests written before them lack (read as null)."""


OLD_INFIX = ".old-"
"""An export moves the folder it replaces aside as ``.NAME.old-*`` until the new one is in."""


def interrupted_exports(folder: Path) -> list[Path]:
    """The ``.NAME.old-*`` folders an interrupted export left beside ``folder``, sorted."""
    return sorted(folder.parent.glob(f".{glob.escape(folder.name)}{OLD_INFIX}*"))


class ArtifactError(ValueError):
    """An artifact folder that is missing, malformed, or does not match its manifest."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnx_external_data(path: Path) -> list[str]:
    """File names an ONNX graph loads tensors from (its external data references).

    A graph whose bytes never contain the key ``location`` has none; otherwise the
    ``onnx`` package reads the references without loading them.
    """
    with open(path, "rb") as fh:
        if b"location" not in fh.read():
            return []
    try:
        import onnx
    except ImportError:
        raise ArtifactError(f"'{path.name}' may reference external data; install onnx to "
                            "validate it") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors have several types
        raise ArtifactError(f"'{path.name}' is not a readable ONNX graph ({exc})") from None
    names = []
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            names.append(entries.get("location", ""))
    return list(dict.fromkeys(names))


def _is_xml(path: Path) -> bool:
    """True when the file's content is XML (an OpenVINO IR), whatever its name."""
    with open(path, "rb") as fh:
        return fh.read(256).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def graph_files(graph_file: str) -> list[str]:
    """Files one graph entry stands for by its name: an IR ``.xml`` (any case) brings the
    weights file OpenVINO reads with it, the name up to its last dot plus ``.bin``."""
    if graph_file.lower().endswith(".xml"):
        return [graph_file, graph_file[: graph_file.rfind(".")] + ".bin"]
    return [graph_file]


def files_read(folder: Path, graph_file: str) -> list[str]:
    """Every file the engines read for one graph: :func:`graph_files` and, for a graph
    whose content is ONNX (OpenVINO reads ONNX under any name), its external data."""
    names = graph_files(graph_file)
    if not _is_xml(folder / graph_file):
        names += [n for n in onnx_external_data(folder / graph_file) if n not in names]
    return names


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add the sha256 of every file the graphs read, validate, and write ``manifest.json``."""
    names = {n for formats in manifest["graphs"].values() for f in formats.values()
             for n in files_read(folder, f)}
    manifest = {**manifest, "files": {n: sha256_file(folder / n) for n in sorted(names)}}
    validate_manifest(manifest)
    atomic_write_bytes(folder / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
    return manifest


def combined_digest(named_digests: list[tuple[str, str]]) -> str:
    """One sha256 standing for several files: of their names and sha256s, in order."""
    return hashlib.sha256("".join(f"{n}\0{d}\n" for n, d in named_digests).encode()).hexdigest()


def graph_digest(path: Path) -> str:
    """:func:`combined_digest` of the files a graph file reads, hashed from disk now.

    What a compile cache is keyed on when no verified manifest digest is at hand.
    """
    path = Path(path)
    return combined_digest([(n, sha256_file(path.parent / n))
                            for n in files_read(path.parent, path.name)])


def default_mode(directory: bool = False) -> int:
    """Permissions a plain ``open``/``mkdir`` would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either nothing or all of it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise ArtifactError(f"manifest: {what}")


def _is_shape(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v
    )


def _safe_file_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and not os.path.isabs(name)
    )


def validate_manifest(m: Any) -> None:
    """Raise :class:`ArtifactError` naming the first field that breaks the schema."""
    _require(isinstance(m, dict), "top level must be a JSON object")
    version = m.get("format_version")
    _require(
        version == FORMAT_VERSION,
        f"unsupported format_version {version!r} (this runtime reads {FORMAT_VERSION})",
    )
    for key in ("source", "input", "feature", "output", "graphs", "files", "check"):
        _require(isinstance(m.get(key), dict), f"'{key}' must be an object")
    _require(isinstance(m.get("target_layer"), str), "'target_layer' must be a string")
    try:
        Preprocessing.from_dict(m["input"])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"manifest: invalid 'input': {exc}") from None
    _require(_is_shape(m["input"].get("shape"), 4), "'input.shape' must be 4 positive ints")
    _require(m["input"].get("images_per_call", 1) == 1 and
             type(m["input"].get("images_per_call", 1)) is int,
             "'input.images_per_call' must be 1 where present")
    _require(m.get("task", "classify") in TASKS, f"'task' must be one of {TASKS}")
    if m.get("task") == "detect":
        from .detection_artifact import validate_levels

        validate_levels(m["feature"], _require)
    elif m["feature"].get("kind", "map") == "tokens":
        _validate_tokens(m)
    else:
        _require(m["feature"].get("kind", "map") in FEATURE_KINDS,
                 f"'feature.kind' must be one of {FEATURE_KINDS}")
        _require(_is_shape(m["feature"].get("shape"), 3), "'feature.shape' must be [C, h, w]")
    n_classes = m["output"].get("num_classes")
    _require(isinstance(n_classes, int) and n_classes > 0, "'output.num_classes' must be > 0")
    _require(isinstance(m["output"].get("logits"), bool), "'output.logits' must be a boolean")
    labels = m.get("labels")
    _require(
        labels is None
        or (isinstance(labels, list) and len(labels) == n_classes
            and all(isinstance(s, str) for s in labels)),
        "'labels' must be null or one string per class",
    )
    _require(isinstance(m.get("g_starts_with_gap"), bool), "'g_starts_with_gap' must be a bool")
    graphs = m["graphs"]
    needed = ("f", "g_pooled") if m["g_starts_with_gap"] else ("f", "g")
    for role in needed:
        _require(isinstance(graphs.get(role), dict) and graphs[role], f"graph '{role}' missing")
    for role, formats in graphs.items():
        _require(role in GRAPH_ROLES and isinstance(formats, dict), f"unknown graph '{role}'")
        for fmt, name in formats.items():
            _require(fmt in GRAPH_FORMATS, f"unknown format '{fmt}' for graph '{role}'")
            _require(_safe_file_name(name), f"file name {name!r} must be a bare file name")
            _require(name.lower().endswith(GRAPH_SUFFIXES[fmt]),
                     f"graph '{role}' in format '{fmt}' must be a {GRAPH_SUFFIXES[fmt]} file, "
                     f"not {name!r}")
            for part in graph_files(name):
                _require(part in m["files"], f"file '{part}' has no sha256 entry")
    for name, digest in m["files"].items():
        _require(_safe_file_name(name), f"file name {name!r} must be a bare file name")
        _require(isinstance(digest, str) and len(digest) == 64
                 and all(ch in "0123456789abcdef" for ch in digest), f"bad sha256 for '{name}'")
    if "explain" in graphs:
        _validate_explain(m.get("explain"), n_classes)


def _validate_tokens(m: dict[str, Any]) -> None:
    """A token feature: ``shape`` [T, D], ``grid`` [h, w], ``prefix_tokens`` p with
    T = p + h·w, and a ``token_tail`` saying how ``g`` scores the masked copies."""
    feature = m["feature"]
    _require(_is_shape(feature.get("shape"), 2), "'feature.shape' of tokens must be [T, D]")
    _require(_is_shape(feature.get("grid"), 2), "'feature.grid' must be [h, w]")
    prefix = feature.get("prefix_tokens")
    _require(isinstance(prefix, int) and not isinstance(prefix, bool) and prefix >= 0,
             "'feature.prefix_tokens' must be an integer >= 0")
    h, w = feature["grid"]
    _require(feature["shape"][0] == prefix + h * w,
             "'feature.shape[0]' must be prefix_tokens + h*w tokens")
    tail = m.get("token_tail")
    _require(isinstance(tail, dict) and tail.get("kind") in TOKEN_TAILS
             and isinstance(tail.get("masks_name"), str),
             f"'token_tail' must be an object with kind in {TOKEN_TAILS} and masks_name")
    _require(m.get("g_starts_with_gap") is False, "a token feature has no pooled tail")


def _validate_explain(section: Any, n_classes: int) -> None:
    required = [key for key in EXPLAIN_KEYS if key not in EXPLAIN_OPTIONAL_KEYS]
    _require(isinstance(section, dict) and set(required) <= set(section),
             f"'explain' must be an object with {', '.join(required)}")
    k = section["top_k"]
    _require(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= n_classes,
             "'explain.top_k' must be an integer in 1..num_classes")
    _require(section["mask"] in MASK_KINDS, f"'explain.mask' must be one of {MASK_KINDS}")
    sigma = section["mask_sigma"]
    _require(sigma is None or (isinstance(sigma, (int, float)) and not isinstance(sigma, bool)
                               and 0 < sigma < 1e6), "'explain.mask_sigma' must be null or > 0")
    strength = section.get("mask_strength")
    _require(strength is None or (isinstance(strength, (int, float))
                                  and not isinstance(strength, bool) and 0 < strength < 1e30),
             "'explain.mask_strength' must be null or > 0")
    _require(section["scores"] in SCORE_KINDS, f"'explain.scores' must be one of {SCORE_KINDS}")


@dataclass(frozen=True)
class TokenFeature:
    """Tokens (T, D) at the cut: ``prefix`` leading non-patch tokens (the class token), then
    the h·w patch tokens of ``grid`` row by row. ``g`` takes the tokens and mask rows (M, N)
    named ``masks_name`` and returns (B, M, classes); its ``tail`` is a :data:`TOKEN_TAILS`."""

    count: int
    width: int
    grid: tuple[int, int]
    prefix: int
    tail: str
    masks_name: str


@dataclass(frozen=True)
class Artifact:
    """A validated artifact folder: the ``f``/``g`` graphs and what is needed to use them."""

    folder: Path
    manifest: dict[str, Any]
    manifest_sha256: str = ""
    """sha256 of the ``manifest.json`` bytes loaded: names every file's content, so it
    identifies what made an explanation (resumed runs compare it)."""
    _reads: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def load(cls, folder: str | Path, verify_files: bool = True) -> Artifact:
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not folder.is_dir():
            left = interrupted_exports(folder)
            hint = (f"; an interrupted export left it as '{left[0].name}' beside it: run the "
                    "export again to put it back") if left else ""
            raise ArtifactError(f"{folder}: not an artifact folder (no such directory{hint})")
        if not path.is_file():
            raise ArtifactError(f"{folder}: not an artifact folder (no {MANIFEST_NAME})")
        try:
            with open(path, "rb") as fh:
                too_large = os.fstat(fh.fileno()).st_size > MAX_MANIFEST_BYTES
                data = b"" if too_large else fh.read(MAX_MANIFEST_BYTES + 1)
            if too_large or len(data) > MAX_MANIFEST_BYTES:
                raise ArtifactError(f"{path}: manifest larger than "
                                    f"{MAX_MANIFEST_BYTES >> 20} MiB, refused")
            manifest = json.loads(data.decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
        except RecursionError:
            raise ArtifactError(f"{path}: unreadable manifest (nested too deeply)") from None
        try:
            validate_manifest(manifest)
        except ArtifactError as exc:
            raise ArtifactError(f"{folder}: {exc}") from None
        except RecursionError:
            raise ArtifactError(f"{folder}: manifest: nested too deeply") from None
        artifact = cls(folder, manifest, hashlib.sha256(data).hexdigest())
        if verify_files:
            artifact.verify_files()
        return artifact

    def verify_files(self) -> None:
        """Check every file exists inside the folder and matches its sha256, and that every
        file a graph reads (IR weights, ONNX external data) is one of them."""
        root = self.folder.resolve()
        for name, digest in self.manifest["files"].items():
            path = self.folder / name
            if not path.is_file():
                raise ArtifactError(f"{self.folder}: file '{name}' named in manifest is missing")
            if root not in path.resolve().parents:
                raise ArtifactError(f"{self.folder}: file '{name}' points outside the folder")
            if sha256_file(path) != digest:
                raise ArtifactError(f"{self.folder}: file '{name}' does not match its sha256")
        for name in self.graph_names():
            self.files_read(name)

    def graph_names(self) -> list[str]:
        """Every graph file the manifest names, each once."""
        return list(dict.fromkeys(
            name for formats in self.manifest["graphs"].values() for name in formats.values()))

    def files_read(self, graph_file: str) -> list[str]:
        """The artifact's files that graph ``graph_file`` reads; refuses a reference to any
        other file (which no sha256 covers)."""
        if graph_file in self._reads:
            return self._reads[graph_file]
        try:
            names = files_read(self.folder, graph_file)
        except (ArtifactError, OSError) as exc:
            raise ArtifactError(f"{self.folder}: {exc}") from None
        for ref in names:
            if not _safe_file_name(ref) or ref not in self.manifest["files"]:
                raise ArtifactError(
                    f"{self.folder}: '{graph_file}' references external data {ref!r} that is "
                    "not a file of this artifact")
        self._reads[graph_file] = names
        return names

    def graph_digest(self, path: Path) -> str:
        """:func:`combined_digest` of the files graph ``path`` reads, from the manifest's
        (verified) sha256s: a compile cache keyed on it can only stand for these bytes."""
        files = self.manifest["files"]
        return combined_digest([(n, files[n]) for n in self.files_read(Path(path).name)])

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.folder.name)

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["input"])

    @property
    def images_per_call(self) -> int | None:
        """1 where ``f`` runs on one image at a time (a shape fixed at batch 1 that the
        exporter could not make free); None: any batch."""
        return self.manifest["input"].get("images_per_call")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the map the saliency lives on; for tokens (D, h, w): width and grid."""
        tokens = self.tokens
        if tokens is not None:
            return tokens.width, *tokens.grid
        c, h, w = self.manifest["feature"]["shape"]
        return c, h, w

    @property
    def tokens(self) -> TokenFeature | None:
        """The token feature (ViT), or None for a (C, h, w) map."""
        feature = self.manifest["feature"]
        if feature.get("kind", "map") != "tokens":
            return None
        tail = self.manifest["token_tail"]
        return TokenFeature(feature["shape"][0], feature["shape"][1], tuple(feature["grid"]),
                            feature["prefix_tokens"], tail["kind"], tail["masks_name"])

    @property
    def default_mask(self) -> str:
        """The mask a request gets unless it names one: the explain graph's (one artifact,
        one explanation, wherever it runs); for an artifact without one, the authors' 3×3
        Gaussian for tokens (ViT-ReciproCAM), ``masking.DEFAULT_MASK`` (Eq. 5's one-hot) for
        maps."""
        explain = self.explain
        if explain is not None:
            return explain["mask"]
        return "gaussian" if self.tokens is not None else DEFAULT_MASK

    @property
    def task(self) -> str:
        """``classify`` or ``detect`` (:data:`TASKS`)."""
        return self.manifest.get("task", "classify")

    @property
    def num_classes(self) -> int:
        return self.manifest["output"]["num_classes"]

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels")

    @property
    def outputs_logits(self) -> bool:
        """False when ``g`` ends in the model's own softmax (exported with ``--keep-softmax``)."""
        return self.manifest["output"]["logits"]

    @property
    def g_starts_with_gap(self) -> bool:
        return self.manifest["g_starts_with_gap"]

    def expected_io(self, role: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(input, output) shapes graph ``role`` must have by the manifest; -1 = any batch."""
        c, h, w = self.feature_shape
        scores = (-1, self.num_classes)
        tokens = self.tokens
        if tokens is not None and role in ("f", "g"):
            seq = (-1, tokens.count, tokens.width)
            return {"f": ((-1, *self.manifest["input"]["shape"][1:]), seq),
                    "g": (seq, (-1, -1, self.num_classes))}[role]
        return {
            "f": ((-1, *self.manifest["input"]["shape"][1:]), (-1, c, h, w)),
            "g": ((-1, c, h, w), scores),
            "g_pooled": ((-1, c), scores),
            "explain": ((-1, *self.manifest["input"]["shape"][1:]), scores),
        }[role]

    def check_io(self, role: str, actual: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        """Refuse a graph whose declared shapes contradict the manifest."""
        for side, want, got in zip(("input", "output"), self.expected_io(role), actual,
                                   strict=True):
            if len(want) != len(got) or any(
                    a != b and -1 not in (a, b) for a, b in zip(want, got, strict=False)):
                raise ArtifactError(
                    f"{self.folder}: graph '{role}' has {side} shape {list(got)} but the "
                    f"manifest implies {list(want)} (-1: any)")

    @property
    def explain(self) -> dict[str, Any] | None:
        """What the explain graph computes (every key of :data:`EXPLAIN_KEYS`, an optional one
        absent from the manifest as None), or None for an artifact without one (exported
        before it existed)."""
        if "explain" not in self.manifest["graphs"]:
            return None
        return {**dict.fromkeys(EXPLAIN_OPTIONAL_KEYS), **self.manifest["explain"]}

    def label(self, k: int) -> str:
        labels = self.labels
        return labels[k] if labels else f"class {k}"

    def graph_path(self, role: str, fmt: str) -> Path | None:
        """Path of graph ``role`` in format ``fmt``, or None when not exported."""
        name = self.manifest["graphs"].get(role, {}).get(fmt)
        return self.folder / name if name else None
