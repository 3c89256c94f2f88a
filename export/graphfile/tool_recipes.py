"""The preprocessing a graph file's exporting tool recorded, read where the tool writes it.

Ultralytics writes ``imgsz`` and ``task`` into the ONNX metadata (its classify transforms:
shorter side to ``imgsz``, centre crop, pixels / 255, no mean or std); Hugging Face optimum
writes ``preprocessor_config.json`` beside ``model.onnx`` (``image_mean``, ``image_std``,
``size``, ``crop_pct``, ``resample``, ``rescale_factor``). Both tools resize with PIL, so
their recipes have Pillow resize (``resampler: pil``). Command-line flags override it,
field by field.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExportError

HF_CONFIG = "preprocessor_config.json"
ULTRALYTICS_METADATA = "metadata.yaml"
"""What Ultralytics writes beside the ``.xml`` of an OpenVINO export (its ONNX export keeps
the same fields in the graph's metadata)."""
SIDECAR_KEYS = ("task", "imgsz", "names")
PIL_RESAMPLERS = {2: "bilinear", 3: "bicubic"}
"""PIL's resampling codes that the runtime reproduces (0 nearest, 1 Lanczos: not)."""
CONVNEXT_CROP_BELOW = 384
"""Hugging Face's ConvNeXt processor crops only below this ``shortest_edge``."""


@dataclass(frozen=True)
class Recipe:
    """Preprocessing fields (``Preprocessing``'s names) a tool recorded, where it did so,
    the input size it used (None: the graph's), and what could not be followed."""

    options: dict[str, Any]
    source: str
    size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)


def sidecar_metadata(path: str | Path) -> dict[str, str]:
    """``task``, ``imgsz`` and ``names`` from Ultralytics' ``metadata.yaml`` beside the graph
    file at ``path``, written as the ONNX metadata holds them (text); {} without the file."""
    file = Path(path).with_name(ULTRALYTICS_METADATA)
    if not file.is_file():
        return {}
    import yaml  # the export extra's; read only when the file is there

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ExportError(f"{file}: not readable YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{file}: not a YAML mapping of Ultralytics' export fields")
    return {key: value if isinstance(value, str) else repr(value)
            for key, value in data.items() if key in SIDECAR_KEYS}


def tool_recipe(path: str | Path, metadata: Mapping[str, str],
                where: str = "the graph's Ultralytics metadata") -> Recipe | None:
    """The recipe recorded for the graph at ``path`` (its ``metadata``, found ``where``; an IR
    converted from ONNX keeps it under ``framework/``), if any."""
    short = {key.rsplit("/", 1)[-1]: value for key, value in metadata.items()}
    if short.get("task") == "classify" and "imgsz" in short:
        return ultralytics_recipe(short, where)
    config = Path(path).with_name(HF_CONFIG)
    if config.is_file():
        return optimum_recipe(config)
    return None


def ultralytics_recipe(metadata: Mapping[str, str],
                       where: str = "the graph's Ultralytics metadata") -> Recipe:
    """Ultralytics' ``classify_transforms`` at the ``imgsz`` it exported at."""
    try:
        size = ast.literal_eval(metadata["imgsz"])
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    except (ValueError, SyntaxError, TypeError, IndexError):
        raise ExportError(f"Ultralytics metadata imgsz {metadata['imgsz']!r} is not a size"
                          ) from None
    options: dict[str, Any] = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
                               "scale": 1 / 255, "interpolation": "bilinear",
                               "resampler": "pil"}
    if h == w:  # torchvision Resize(h) on the shorter side, then CenterCrop
        options.update(resize="shorter_side_crop", resize_size=h)
    else:
        options["resize"] = "direct"
    return Recipe(options, where, (h, w))


def optimum_recipe(config: Path) -> Recipe:
    """A Hugging Face image processor's configuration, as its ``preprocess`` applies it."""
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError("not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{config}: not a readable preprocessor configuration ({exc})"
                          ) from None
    options: dict[str, Any] = {"resampler": "pil"}
    notes = []
    if cfg.get("do_normalize", True) and "image_mean" in cfg:
        options["mean"] = tuple(float(v) for v in cfg["image_mean"])
        options["std"] = tuple(float(v) for v in cfg.get("image_std", (1.0, 1.0, 1.0)))
    elif not cfg.get("do_normalize", True):
        options["mean"], options["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    options["scale"] = float(cfg.get("rescale_factor", 1 / 255)) \
        if cfg.get("do_rescale", True) else 1.0
    resample = cfg.get("resample")
    if resample in PIL_RESAMPLERS:
        options["interpolation"] = PIL_RESAMPLERS[resample]
    elif resample is not None:
        notes.append(f"resample {resample} (PIL) is not reproduced; bilinear is used")
    size, crop = cfg.get("size"), cfg.get("crop_size")
    out_size: tuple[int, int] | None = None
    if isinstance(size, int):
        size = {"shortest_edge": size}
    if isinstance(size, dict) and "height" in size and "width" in size:
        out_size = (int(size["height"]), int(size["width"]))
        options["resize"] = "direct"
    elif isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in cfg and cfg["crop_pct"] is not None:
            if edge < CONVNEXT_CROP_BELOW:
                options.update(resize="shorter_side_crop",
                               resize_size=int(edge / float(cfg["crop_pct"])))
            else:
                options["resize"] = "direct"
            out_size = (edge, edge)
        elif cfg.get("do_center_crop") and isinstance(crop, dict) and "height" in crop:
            options.update(resize="shorter_side_crop", resize_size=edge)
            out_size = (int(crop["height"]), int(crop["width"]))
        else:
            notes.append("size keeps the aspect ratio without a crop; resized directly")
            options["resize"] = "direct"
            out_size = (edge, edge)
    return Recipe(options, f"{config.name} beside the graph", out_size, notes)
