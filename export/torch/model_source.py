"""Where the PyTorch model comes from: a torchvision name or ``package.module:callable``."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from reciprocam_ir.messages import first_line
from reciprocam_ir.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

from ..errors import ExportError
from ..input_size import InputSize, as_hw, checked_size

DEFAULT_SIZE = 224
RESIZE_RATIO = 256 / 224
"""torchvision's classic recipe: resize the shorter side to 256, crop 224."""


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    source: dict[str, Any]
    preprocessing: Preprocessing
    labels: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def classification_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved by ``torch.save``, or a checkpoint holding one under 'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"weights file '{path}' not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for corrupt or unsafe files
        raise ExportError(f"weights file '{path}' cannot be read: {first_line(exc)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(f"weights file '{path}' does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def apply_weights(model: nn.Module, path: str | Path) -> None:
    state = load_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing = set(model.state_dict()) - set(state)
        unexpected = set(state) - set(model.state_dict())
        detail = (f"{len(missing)} missing keys (e.g. {sorted(missing)[:2]}), "
                  f"{len(unexpected)} unexpected keys (e.g. {sorted(unexpected)[:2]})"
                  if missing or unexpected else str(exc).splitlines()[-1].strip()[:200])
        raise ExportError(f"weights file '{path}' does not match the model: {detail}") from None


def _torchvision_preprocessing(weights: Any) -> Preprocessing:
    """The weights' own ``transforms()`` (resize, crop, interpolation, antialias) as a manifest;
    :func:`at_input_size` scales it to another input size."""
    t = weights.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    return Preprocessing(size=(crop, crop), resize="shorter_side_crop", resize_size=resize,
                         mean=tuple(t.mean), std=tuple(t.std),
                         interpolation=t.interpolation.value, antialias=bool(t.antialias))


def at_input_size(preprocessing: Preprocessing, size: tuple[int, int] | None) -> Preprocessing:
    """The recipe at another input size: ``resize_size`` scales with the shorter crop side.

    torchvision's 256/224 at 48x192 resizes the shorter side to round(48 * 256 / 224) = 55.
    """
    if size is None or size == preprocessing.size:
        return preprocessing
    resize_size = preprocessing.resize_size
    if resize_size is not None:
        resize_size = int(round(min(size) * resize_size / min(preprocessing.size)))
    return dataclasses.replace(preprocessing, size=size, resize_size=resize_size)


def load_torchvision(name: str, weights: str | None, size: tuple[int, int] | None
                     ) -> LoadedModel:
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ExportError(f"unknown model '{name}': not a torchvision classification model"
                          f" nor a 'package.module:callable' path{hint}")
    default = torchvision.models.get_model_weights(name).DEFAULT
    choice = "DEFAULT" if weights is None else weights
    if choice.upper() == "DEFAULT":
        try:
            model = torchvision.models.get_model(name, weights=default)
        except Exception as exc:  # network errors come in many types
            raise ExportError(
                f"cannot get {name}'s DEFAULT weights ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else 'download failed'}); "
                "offline, pass --weights PATH or --weights none") from None
        source = str(default)
    else:
        with torch.random.fork_rng(devices=[]):  # `none`: the same random model each time
            torch.manual_seed(0)
            model = torchvision.models.get_model(name, weights=None)
        source = "none"
        if choice.lower() == "none":
            draw_zero_layers(model)
        else:
            apply_weights(model, choice)
            source = str(Path(choice).resolve())
    labels = list(default.meta.get("categories") or []) or None
    return LoadedModel(model, name, {"model": name, "weights": source},
                       at_input_size(_torchvision_preprocessing(default), size), labels)


def draw_zero_layers(model: nn.Module) -> None:
    """Draw at random (seeded, PyTorch's default init) the linear layers initialised to zero.

    torchvision zeroes the ViT head, so a ViT with random weights would give every image the
    same scores: nothing to explain, and the export refuses it. ``--weights none`` is for
    structure, equivalence and speed, which need scores that depend on the image.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Linear) and not layer.weight.any():
                bound = layer.in_features ** -0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                if layer.bias is not None:
                    layer.bias.uniform_(-bound, bound, generator=generator)


def load_callable(spec: str, weights: str | None, size: tuple[int, int] | None
                  ) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ExportError(f"model '{spec}': expected 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ExportError(f"model '{spec}': cannot import '{module_name}' "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                          ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ExportError(f"model '{spec}': '{module_name}' has no callable '{attr}'")
    try:
        model = factory()
    except Exception as exc:
        raise ExportError(f"model '{spec}': calling it failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(model, nn.Module):
        raise ExportError(f"model '{spec}' returned {type(model).__name__}, not a torch nn.Module")
    return from_module(model, attr, spec, weights, size)


def from_module(model: nn.Module, name: str, spec: str, weights: str | None,
                size: tuple[int, int] | None) -> LoadedModel:
    """A model object: its own weights (or ``weights``), preprocessing and labels."""
    source = "callable"
    if weights is not None and weights.lower() not in ("none", "default"):
        apply_weights(model, weights)
        source = str(Path(weights).resolve())
    try:
        spec_in = dict(getattr(model, "reciprocam_input", None) or timm_recipe(model))
        own = as_hw(spec_in.pop("size", DEFAULT_SIZE))
        size = size or own
        crop_pct = spec_in.pop("crop_pct", None)
        if spec_in.get("resize", "shorter_side_crop") == "shorter_side_crop":
            spec_in.setdefault("resize_size", int(round(min(size) * RESIZE_RATIO)) if not crop_pct
                               else max(min(size), math.floor(min(size) / crop_pct)))
        preprocessing = Preprocessing(size=size, **spec_in)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"model '{spec}': invalid reciprocam_input: {exc}") from None
    labels = getattr(model, "reciprocam_labels", None)
    return LoadedModel(model, name, {"model": spec, "weights": source}, preprocessing,
                       list(labels) if labels is not None else None)


def timm_recipe(model: nn.Module) -> dict[str, Any]:
    """A timm model's own preprocessing from its ``pretrained_cfg`` (mean, std, input size,
    interpolation, crop_pct) as ``reciprocam_input`` entries, resized by PIL as timm's
    transforms do; {} for other models. The size
    is the one the model was built for (``patch_embed.img_size``) where that differs from the
    pretrained one; ``crop_pct`` gives the centre crop's resize, ``floor(size / crop_pct)``
    as timm's own transforms."""
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or "mean" not in cfg or "std" not in cfg:
        return {}
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)
    size = as_hw(tuple(built) if built else tuple(cfg.get("input_size", (3, DEFAULT_SIZE))[1:]))
    recipe: dict[str, Any] = {"size": size, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]),
                              "resampler": "pil"}
    if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest"):
        recipe["interpolation"] = cfg["interpolation"]
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    if crop_pct >= 1.0 and cfg.get("crop_mode", "center") == "squash":
        recipe["resize"] = "direct"
    else:
        recipe["crop_pct"] = crop_pct
    return recipe


def load_model(spec: str | nn.Module, weights: str | None = None,
               size: InputSize | None = None) -> LoadedModel:
    """Load ``spec`` (a name, an import path, or a model object) in eval mode.

    ``size`` is N or (height, width). A callable may describe its own preprocessing with a
    ``reciprocam_input`` dict (``size`` N or (H, W), ``resize``, ``resize_size``, ``scale``,
    ``mean``, ``std``, ``color``) and its class names with ``reciprocam_labels``; otherwise
    ImageNet's recipe is assumed.
    """
    size = checked_size(size, 32)
    if isinstance(spec, nn.Module):
        loaded = from_module(spec, type(spec).__name__.lower(), type(spec).__qualname__,
                             weights, size)
    elif ":" in spec:
        loaded = load_callable(spec, weights, size)
    else:
        loaded = load_torchvision(spec, weights, size)
    loaded.model.eval()
    return loaded


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LoadedModel", "classification_models", "load_model"]
