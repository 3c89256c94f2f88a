"""Image → network input, driven only by the artifact's manifest (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_POLICIES = ("direct", "shorter_side_crop")
COLOR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
DEFAULT_MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image that cannot be read or used."""


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the network input: resize, scale, normalise, lay out.

    ``resize="direct"`` resizes straight to ``size``; ``"shorter_side_crop"`` resizes the
    shorter side to ``resize_size`` and takes the centre ``size`` crop (torchvision's recipe).
    """

    size: tuple[int, int]
    resize: str = "shorter_side_crop"
    resize_size: int | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    color: str = "RGB"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        problems = []
        if len(self.size) != 2 or min(self.size) < 1:
            problems.append(f"size must be two positive integers, got {self.size}")
        if self.resize not in RESIZE_POLICIES:
            problems.append(f"resize must be one of {RESIZE_POLICIES}, got {self.resize!r}")
        if self.resize == "shorter_side_crop" and (
            self.resize_size is None or self.resize_size < min(self.size)
        ):
            problems.append(f"resize_size must be at least the crop size, got {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std must be three numbers, std positive")
        if not self.scale > 0:
            problems.append(f"scale must be positive, got {self.scale}")
        if self.color not in COLOR_ORDERS:
            problems.append(f"color must be one of {COLOR_ORDERS}, got {self.color!r}")
        if self.layout not in LAYOUTS:
            problems.append(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """Read the manifest's ``input`` section (``shape`` gives the size)."""
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
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("size")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["shape"] = [1, *self.size, 3] if self.layout == "NHWC" else [1, 3, *self.size]
        return d

    def crop_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The region (y0, x0, y1, x1) of an image of this size that the network sees."""
        if self.resize == "direct":
            return 0.0, 0.0, float(height), float(width)
        s = self.resize_size / min(height, width)
        crop_h, crop_w = self.size[0] / s, self.size[1] / s
        y0, x0 = (height - crop_h) / 2, (width - crop_w) / 2
        return y0, x0, y0 + crop_h, x0 + crop_w

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB → 1x3xHxW (or 1xHxWx3 for NHWC) float32 network input."""
        rgb = as_rgb(rgb)
        h, w = self.size
        if self.resize == "direct":
            img = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            s = self.resize_size / min(rgb.shape[:2])
            rh = max(h, int(round(rgb.shape[0] * s)))
            rw = max(w, int(round(rgb.shape[1] * s)))
            img = cv2.resize(rgb, (rw, rh), interpolation=cv2.INTER_LINEAR)
            top, left = (rh - h) // 2, (rw - w) // 2
            img = img[top : top + h, left : left + w]
        if self.color == "BGR":
            img = img[:, :, ::-1]
        x = img.astype(np.float32) * np.float32(self.scale)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NHWC":
            return np.ascontiguousarray(x[None])
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


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


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; grayscale, RGBA and 16-bit are converted."""
    path = Path(path)
    if not path.is_file():
        raise ImageError("no such file" if not path.exists() else "not a file")
    return decode_image(np.fromfile(path, dtype=np.uint8), max_pixels)


def decode_image(data: bytes | np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...; content decides) as HxWx3 uint8 RGB.

    The one decoder behind every entry point (files, server requests, dataset rows).
    """
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray,
                                                                      memoryview)) else data
    if data.size == 0:
        raise ImageError("empty file")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    except cv2.error as exc:  # OpenCV refuses some headers (absurd sizes) by raising
        reason = str(exc).strip().splitlines()[-1][:120]
        raise ImageError(f"not a readable image ({reason})") from None
    if image is None:
        raise ImageError("not a readable image (unknown format or corrupt data)")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"image has more than the {max_pixels}-pixel limit")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image.astype(np.float32) * 255.0, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"unsupported number of channels: {channels}")
