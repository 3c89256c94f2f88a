"""Image → network input, driven only by the artifact's manifest (no torch)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .image_header import ImageError
from .image_reader import (
    DEFAULT_MAX_PIXELS,
    DecodedImage,
    MinSize,
    decode_image,
    image_size,
    read_image,
)
from .resample import INTERPOLATIONS, axis_taps, resample

RESAMPLERS = ("torchvision", "pil")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_POLICIES = ("direct", "shorter_side_crop", "squash_crop", "pad")
CROP_POLICIES = ("shorter_side_crop", "squash_crop")
PAD_POSITIONS = ("center", "top_left")
COLOR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
DECODE_MARGIN = 3
"""How many times the resized size an image decoded reduced keeps, per axis. At 2, a 24 MP
photo decoded at 1/8 changed Lite0's top-1 class (scripts/preprocess_speed.py --part accuracy
--margin 2); at 3 no photo did (docs/performance.md)."""
MAX_SIDE = 8192
"""Largest input side and ``resize_size``: an 8192² float32 input is already 805 MB."""


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the network input: resize, scale, normalise, lay out.

    ``resize`` policies: ``"direct"`` resizes straight to ``size``; ``"shorter_side_crop"``
    resizes the shorter side to ``resize_size`` and takes the centre ``size`` crop
    (torchvision's ``Resize`` + ``CenterCrop``, with its rounding); ``"squash_crop"``
    resizes both sides to ``resize_size`` (the aspect ratio lost) and takes the centre
    ``size`` crop (Caffe-era recipes: 256 x 256, then 224); ``"pad"`` scales the
    image to fit inside ``size`` keeping its aspect ratio and fills the rest with
    ``pad_value`` (a pixel value, 0..255 before ``scale``), the image at the centre or the
    top left (``pad_position``). ``interpolation`` and ``antialias`` are torchvision's
    (antialiased shrinking, as PIL and torchvision's weights' transforms do). The resized
    image is rounded to 8 bits, as torchvision and OpenCV do on uint8 images.
    ``resampler``: ``"torchvision"`` computes the resize as torchvision's tensor resize
    does; ``"pil"`` has Pillow's ``Image.resize`` do it (timm, Hugging Face and
    Ultralytics resize with PIL; PIL always antialiases).
    """

    size: tuple[int, int]
    resize: str = "shorter_side_crop"
    resize_size: int | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    layout: str = "NCHW"
    interpolation: str = "bilinear"
    antialias: bool = True
    pad_position: str = "center"
    pad_value: float = 0.0
    resampler: str = "torchvision"

    def __post_init__(self) -> None:
        problems = []
        if len(self.size) != 2 or not all(_is_int(v) and 1 <= v <= MAX_SIDE for v in self.size):
            problems.append(f"size must be two integers in 1..{MAX_SIDE}, got {self.size}")
        if self.resize not in RESIZE_POLICIES:
            problems.append(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.resize_size is not None and not (
                _is_int(self.resize_size) and 1 <= self.resize_size <= MAX_SIDE):
            problems.append(f"resize_size must be an integer in 1..{MAX_SIDE}, "
                            f"got {self.resize_size!r}")
        elif self.resize in CROP_POLICIES and not problems and (
            self.resize_size is None or self.resize_size < min(self.size)
        ):
            problems.append(f"resize_size must be at least the crop size, got {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0 or not all(
                math.isfinite(v) for v in (*self.mean, *self.std)):
            problems.append("mean and std must be three finite numbers, std positive")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            problems.append(f"scale must be positive and finite, got {self.scale}")
        if self.color not in COLOR_ORDERS:
            problems.append(f"color must be one of {COLOR_ORDERS}, got {self.color!r}")
        if self.layout not in LAYOUTS:
            problems.append(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}, "
                            f"got {self.interpolation!r}")
        if not isinstance(self.antialias, bool):
            problems.append(f"antialias must be true or false, got {self.antialias!r}")
        if self.resampler not in RESAMPLERS:
            problems.append(f"resampler must be one of {RESAMPLERS}, got {self.resampler!r}")
        elif self.resampler == "pil" and self.antialias is False:
            problems.append("resampler pil always antialiases: antialias false has no PIL "
                            "equivalent")
        if self.pad_position not in PAD_POSITIONS:
            problems.append(f"pad_position must be one of {PAD_POSITIONS}, "
                            f"got {self.pad_position!r}")
        if not (isinstance(self.pad_value, (int, float)) and not isinstance(self.pad_value, bool)
                and math.isfinite(self.pad_value)):
            problems.append(f"pad_value must be a finite number, got {self.pad_value!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Read the manifest's ``input`` section (``shape`` gives the size).

        Manifests written before ``interpolation``, ``antialias``, the pad fields and
        ``resampler`` existed get torchvision's defaults: bilinear, antialiased, torchvision.
        """
        shape = d["shape"]
        hw = shape[1:3] if d.get("layout") == "NHWC" else shape[2:4]
        return cls(
            size=(int(hw[0]), int(hw[1])),
            resize=d["resize"],
            resize_size=d.get("resize_size"),
            scale=float(d["scale"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            color=d["color"],
            layout=d["layout"],
            interpolation=d.get("interpolation", "bilinear"),
            antialias=d.get("antialias", True),
            pad_position=d.get("pad_position", "center"),
            pad_value=d.get("pad_value", 0.0),
            resampler=d.get("resampler", "torchvision"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("size")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["shape"] = [1, *self.size, 3] if self.layout == "NHWC" else [1, 3, *self.size]
        return d

    def placement(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Per axis (rows, columns): the resized length and where it starts in the input.

        A negative start means the resized image is cropped; a positive one, padded.
        """
        h, w = self.size
        if self.resize == "direct":
            return (h, 0), (w, 0)
        if self.resize == "pad":
            s = min(h / height, w / width)
            rh, rw = min(h, max(1, round(height * s))), min(w, max(1, round(width * s)))
            if self.pad_position == "top_left":
                return (rh, 0), (rw, 0)
            return (rh, (h - rh) // 2), (rw, (w - rw) // 2)
        if self.resize == "squash_crop":
            return (self.resize_size, _crop_start(self.resize_size, h)), \
                (self.resize_size, _crop_start(self.resize_size, w))
        # torchvision: the long side truncated, the crop offset rounded (pads if it must)
        short, long = sorted((height, width))
        new_long = int(self.resize_size * long / short)
        rh, rw = (self.resize_size, new_long) if height <= width else (new_long, self.resize_size)
        return (rh, _crop_start(rh, h)), (rw, _crop_start(rw, w))

    def min_decode_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (height, width) to decode an image of this size at:
        :data:`DECODE_MARGIN` times the size it is resized to, so that the antialiased
        resize still does most of the filtering."""
        (rh, _), (rw, _) = self.placement(height, width)
        return DECODE_MARGIN * rh, DECODE_MARGIN * rw

    def crop_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The region (y0, x0, y1, x1) of an image of this size that the network sees.

        It reaches beyond the image where the input is padded.
        """
        (rh, top), (rw, left) = self.placement(height, width)
        sy, sx = height / rh, width / rw
        return -top * sy, -left * sx, (self.size[0] - top) * sy, (self.size[1] - left) * sx

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB → 1x3xHxW (or 1xHxWx3 for NHWC) float32 network input.

        Only the part of the resized image that the input keeps is computed. A
        :class:`DecodedImage` decoded reduced is placed as its full-size image would be
        (the same resized size, crop and crop box), resampled from the pixels it has.
        """
        rgb = as_rgb(rgb)
        full = image_size(rgb)
        h, w = self.size
        (rh, top), (rw, left) = self.placement(*full)
        r0, r1 = max(0, -top), min(rh, h - top)
        c0, c1 = max(0, -left), min(rw, w - left)
        reduction = getattr(rgb, "reduction", 1) if full != rgb.shape[:2] else 1
        extent = (full[0] / reduction, full[1] / reduction)
        if self.resampler == "pil":
            from .pil_resample import pil_resize

            img = pil_resize(rgb, (rh, rw), (r0, r1), (c0, c1), self.interpolation, extent)
        else:
            rows = axis_taps(rgb.shape[0], rh, r0, r1 - r0, self.interpolation,
                             self.antialias, extent[0])
            cols = axis_taps(rgb.shape[1], rw, c0, c1 - c0, self.interpolation,
                             self.antialias, extent[1])
            img = resample(rgb, rows, cols)
        if img.shape[:2] != (h, w):
            canvas = np.full((h, w, 3), self.pad_value, np.float32)
            canvas[r0 + top : r1 + top, c0 + left : c1 + left] = img
            img = canvas
        if self.color == "BGR":
            img = img[:, :, ::-1]
        x = img * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NHWC":
            return np.ascontiguousarray(x[None])
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _crop_start(resized: int, crop: int) -> int:
    """Where a centre crop puts the resized axis, as torchvision's ``center_crop`` does."""
    if resized >= crop:
        return -int(round((resized - crop) / 2.0))
    return (crop - resized) // 2


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Check an in-memory image is HxWx3 uint8 (grayscale HxW is expanded)."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ImageError(
            f"expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
        )
    if min(image.shape[:2]) < 1:
        raise ImageError(f"empty image of shape {image.shape}")
    return image


__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGENET_MEAN", "IMAGENET_STD", "DecodedImage", "ImageError",
    "Preprocessing", "as_rgb", "decode_image", "image_size", "read_image",
]


ImageLike = str | Path | np.ndarray
"""What the explainers take as an image: a file path, or an HxWx3 uint8 RGB array."""


def load_image(image: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_size: MinSize | None = None) -> tuple[np.ndarray, str]:
    """An image path or array as (RGB uint8 array, display name); a path's errors name it."""
    if isinstance(image, (str, Path)):
        try:
            return read_image(image, max_pixels, min_size), str(image)
        except ImageError as exc:
            raise ImageError(f"{image}: {exc}") from None
    return as_rgb(image), "image"


def load_images(images: ImageLike | Sequence[ImageLike], max_pixels: int = DEFAULT_MAX_PIXELS,
                min_size: MinSize | None = None, names: Sequence[str] | None = None
                ) -> tuple[list[np.ndarray], list[str]]:
    """One image or a list as RGB arrays and their names (``names``, else each path, else
    ``image<i>``); ValueError for an empty list."""
    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    loaded = [load_image(image, max_pixels, min_size) for image in images]
    if not loaded:
        raise ValueError("no images to explain")
    rgbs = [rgb for rgb, _ in loaded]
    names = list(names) if names is not None else [
        name if name != "image" else f"image{i}" for i, (_, name) in enumerate(loaded)]
    return rgbs, names
