"""``reciprocam-export model.onnx|model.xml``: cut a deployed graph, verify, write the artifact.

No torch: the graph is cut with onnx's tools (ONNX) or the OpenVINO API (IR); the
preprocessing cannot be read from a bare graph, so it comes from the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reciprocam_ir import __version__
from reciprocam_ir.artifact import (
    FEATURE_NAME,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    POOLED_NAME,
    sha256_file,
    write_manifest,
)
from reciprocam_ir.backends import create_backend
from reciprocam_ir.masking import DEFAULT_MASK, masked_batch
from reciprocam_ir.messages import first_line
from reciprocam_ir.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

from .errors import ExportError
from .explain_graph import add_explain_graphs, explain_spec
from .file_cut import is_graph_file
from .graph_files import onnx_to_ir
from .staging import FORMATS, check_destination, staged
from .verify import check_graphs, judge, verification_input

if TYPE_CHECKING:
    from .ir_cut import IrGraph
    from .onnx_cut import OnnxGraph

DEFAULT_SCALE = 1.0 / 255.0
DEFAULT_COLOR = "RGB"


def open_graph(path: str | Path, size: int | None = None) -> OnnxGraph | IrGraph:
    """The cutter for a ``.onnx`` or ``.xml`` file (imports only what that one needs)."""
    if str(path).lower().endswith(".onnx"):
        from .onnx_cut import OnnxGraph

        return OnnxGraph(path, size)
    if str(path).lower().endswith(".xml"):
        from .ir_cut import IrGraph

        return IrGraph(path, size)
    raise ExportError(f"model file '{path}': expected an .onnx or .xml (OpenVINO IR) file")


def _check(backend: str, files: dict[str, Path], x: np.ndarray, reference: np.ndarray,
           source: str) -> float:
    """Max |g(f(x)) − original(x)| on ``backend`` in f32, at batch 1 and batch 2.

    The masked-map reference for :func:`check_graphs` is ``g`` run one map at a time,
    so the batched call checks that ``g``'s batch axis is really free.
    """
    try:
        engine = create_backend(backend, "CPU", "f32")
        f, g = engine.compile(files["f"]), engine.compile(files["g"])
        masked = masked_batch(f(x)[0], 0, 3)
        masked_reference = np.concatenate([g(m[None]) for m in masked])
        batch2 = float(np.abs(g(f(np.concatenate([x, x]))) - reference).max())
        return max(batch2, check_graphs(backend, files, x, reference, masked_reference))
    except Exception as exc:  # ORT, OpenVINO and backend errors: a graph that cannot run
        raise ExportError(f"{source}: the cut graphs do not run on {backend} "
                          f"({first_line(exc)})") from None


def export_graph_file(
    path: str | Path,
    layer: str | None = None,
    size: int | None = None,
    fmt: str = "both",
    out: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scale: float = DEFAULT_SCALE,
    color: str = DEFAULT_COLOR,
    keep_softmax: bool = False,
    resize_size: int | None = None,
    resize: str | None = None,
    explain_top_k: int = 1,
    explain_mask: str = DEFAULT_MASK,
    explain_mask_sigma: float | None = None,
    explain_mask_strength: float | None = None,
    **resampling: Any,
) -> Path:
    """Cut the ONNX/IR classifier at ``path`` and write its artifact folder; return its path.

    ``keep_softmax`` keeps a trailing Softmax in ``g`` (scores are then probabilities);
    by default it is dropped and ``g`` outputs the logits. ``resize``: ``direct`` (straight
    to the input size; the default), ``crop`` (shorter side to ``resize_size``, then the
    centre; the default when ``resize_size`` is given) or ``pad``; ``resampling``: the
    other :class:`Preprocessing` fields (``interpolation``, ``antialias``, ``pad_position``,
    ``pad_value``). The artifact also holds the explain graph of the ``explain_top_k`` best
    classes, for the map of ``explain_mask`` (σ and strength as in ``ReciproCAM``).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}' (choose from {FORMATS})")
    explain_spec(explain_top_k, explain_mask, explain_mask_sigma, explain_mask_strength)
    source = str(path)
    if not is_graph_file(source):
        raise ExportError(f"model file '{path}': expected an .onnx or .xml (OpenVINO IR) file")
    kind = "onnx" if source.lower().endswith(".onnx") else "ir"
    if kind == "ir" and fmt == "onnx":
        raise ExportError(f"{source}: an OpenVINO IR model cannot be written as ONNX; "
                          "use --format ir")
    if kind == "ir" and fmt == "both":
        log("an IR model is written as IR only")
        fmt = "ir"
    log(f"reading {source}")
    graph = open_graph(path, size)
    try:
        resize = resize_policy(resize, resize_size, resampling)
        preprocessing = Preprocessing(size=graph.input.size, resize=resize,
                                      resize_size=resize_size, scale=scale,
                                      mean=tuple(mean), std=tuple(std), color=color,
                                      layout=graph.input.layout, **resampling)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{source}: invalid preprocessing: {exc}") from None
    cut = graph.find(layer)
    out = Path(out) if out is not None else Path("models") / Path(source).stem
    check_destination(out)
    log(f"cutting at '{cut.name}' (feature {'x'.join(map(str, cut.shape))})")
    x = verification_input(graph.input.shape())
    reference = graph.reference(x, keep_softmax)
    softmax_removed = graph.softmax_input is not None and not keep_softmax

    with staged(out) as staging:
        files = graph.write(cut, staging, keep_softmax)
        errors = {}
        if kind == "onnx":
            errors["onnxruntime"] = _check("onnxruntime", files, x, reference, source)
            if fmt in ("ir", "both"):
                ir_files = {}
                for role, onnx_path in files.items():
                    log(f"writing {role}.xml")
                    ir_files[role] = staging / f"{role}.xml"
                    onnx_to_ir(onnx_path, ir_files[role], source)
                # OpenVINO's own run of the original graph, converted as f and g were:
                # INT8 kernels differ between runtimes and conversion paths
                from .ir_cut import IrGraph

                ov_reference = IrGraph(path, size, convert=True).reference(x, keep_softmax)
                errors["openvino"] = _check("openvino", ir_files, x, ov_reference, source)
                if fmt == "ir":
                    for onnx_path in files.values():
                        onnx_path.unlink()
        else:
            errors["openvino"] = _check("openvino", files, x, reference, source)
        check = judge(errors, reference, f"{source}: the cut graphs", log)
        graphs = {role: {**({"onnx": f"{role}.onnx"} if fmt != "ir" else {}),
                         **({"ir": f"{role}.xml"} if fmt != "onnx" else {})} for role in files}
        pooled = "g_pooled" in files
        c, h, w = cut.shape
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": Path(source).stem,
            "source": {"model": str(Path(source).resolve()), "format": kind,
                       "weights": "embedded in the graph file",
                       "sha256": sha256_file(Path(source)),
                       "exporter": f"reciprocam-export {__version__}",
                       **_versions(kind)},
            "target_layer": cut.name,
            "input": {"name": INPUT_NAME, "source_name": graph.input.name,
                      **preprocessing.to_dict()},
            "feature": {"name": FEATURE_NAME, "shape": [c, h, w]},
            "output": {"name": OUTPUT_NAME, "num_classes": int(reference.shape[1]),
                       "logits": not (graph.softmax_input is not None and keep_softmax),
                       "softmax_removed": softmax_removed},
            "labels": None,
            "g_starts_with_gap": pooled,
            "pooled": {"name": POOLED_NAME, "shape": [c]} if pooled else None,
            "graphs": graphs,
            "check": {"input": "seeded standard normal (numpy default_rng(0)), batch 1 and 2",
                      "reference": "the original graph run by the same runtime"
                      + (", pre-Softmax" if softmax_removed else ""),
                      **check},
        }
        add_explain_graphs(staging, write_manifest(staging, manifest), explain_top_k, log,
                           explain_mask, explain_mask_sigma, explain_mask_strength)
    return out


def resize_policy(resize: str | None, resize_size: int | None, options: dict[str, Any]) -> str:
    """The manifest's policy for ``--resize`` (``crop`` needs ``--resize-size``, and only it)."""
    policy = {None: "direct" if resize_size is None else "shorter_side_crop",
              "crop": "shorter_side_crop"}.get(resize, resize)
    if (policy == "shorter_side_crop") != (resize_size is not None):
        raise ValueError("--resize-size N goes with --resize crop, and crop needs it")
    if policy != "pad" and {"pad_position", "pad_value"} & set(options):
        raise ValueError("--pad-position and --pad-value apply only to --resize pad")
    return policy


def _versions(kind: str) -> dict[str, str]:
    import openvino

    versions = {"openvino": openvino.__version__}
    if kind == "onnx":
        import onnx

        versions["onnx"] = onnx.__version__
    return versions
