"""Image files and encoded bytes → HxWx3 uint8 RGB, with memory bounded before decoding.

The header is read first (:mod:`.image_header`): too many pixels, an absurd aspect ratio
or a file larger than its image can be are refused before a byte of pixels is decoded
or the rest of the file is read. A JPEG is decoded by libjpeg-turbo through simplejpeg
(the same pixels as OpenCV's decoder, in about 0.6 of its time on a 12 MP photo) and turned
upright by the EXIF orientation its header states; OpenCV decodes the JPEGs simplejpeg
refuses (damaged data: simplejpeg is strict) and every other format.

Given ``min_size`` (how small the decoded image may be for what follows, see
:meth:`.Preprocessing.min_decode_size`), a JPEG is decoded at 1/2, 1/4 or 1/8 scale in
libjpeg's DCT (shrink on load: most of the inverse DCT, upsampling and colour conversion
is skipped, not the entropy decoding), as a :class:`DecodedImage` that remembers the full
image's size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from .image_header import ImageError, ImageHeader, read_header

DEFAULT_MAX_PIXELS = 100_000_000
MAX_ASPECT_RATIO = 1000
"""Longer side over shorter side; beyond it an image is refused (1×16000 is no photo)."""
MAX_BYTES_PER_PIXEL = 16
"""An uncompressed 4-channel 32-bit image: the most bytes a pixel can take in a file."""
METADATA_BYTES = 16 * 2**20
"""Allowance for metadata (EXIF, ICC profiles, thumbnails) on top of the pixels."""
_DECODE_FLAGS = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH  # not UNCHANGED: EXIF is applied
REDUCED_DECODES = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   2: cv2.IMREAD_REDUCED_COLOR_2}
"""Scales a JPEG decodes at in libjpeg's DCT, largest first, and OpenCV's flag for each.
Other formats have none in OpenCV: its reduced modes decode them in full and resize after,
without antialiasing."""
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: lambda a: cv2.transpose(a),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}
"""The stored pixels turned upright, for each EXIF orientation (EXIF 2.3, as OpenCV does)."""

DECODE_MODES = ("exact", "reduced")
"""``exact``: always full scale; ``reduced``: shrink on load where the format allows it."""

MinSize = Callable[[int, int], tuple[int, int]]
"""``min_size(height, width)``: the smallest (height, width) an image of that full size may
be decoded at."""


class DecodedImage(np.ndarray):
    """An HxWx3 uint8 RGB image decoded at 1/``reduction`` scale of a ``full_size`` (height,
    width) image, upright. Arrays derived from it (slices, copies) are plain images again."""

    full_size: tuple[int, int] | None = None
    reduction: int = 1

    def __array_finalize__(self, obj) -> None:
        self.full_size, self.reduction = None, 1


def image_size(rgb: np.ndarray) -> tuple[int, int]:
    """(height, width) of the image ``rgb`` shows: its full size if decoded reduced."""
    return getattr(rgb, "full_size", None) or rgb.shape[:2]


def reduction(header: ImageHeader, min_size: MinSize | None) -> int:
    """The scale divisor to decode at: the largest JPEG scale whose image, turned upright by
    its EXIF orientation, still has ``min_size``; 1 for full scale."""
    if min_size is None or header.format != "JPEG":
        return 1
    h, w = header.upright_size
    need_h, need_w = min_size(h, w)
    for divisor in REDUCED_DECODES:
        if -(-h // divisor) >= need_h and -(-w // divisor) >= need_w:
            return divisor
    return 1


def max_file_bytes(pixels: int) -> int:
    """The most bytes a file of an image with ``pixels`` pixels is read up to."""
    return MAX_BYTES_PER_PIXEL * pixels + METADATA_BYTES


def check_header(header: ImageHeader, size: int, max_pixels: int) -> None:
    """Refuse, from the header alone, what would take too much memory to decode."""
    w, h = header.width, header.height
    if w * h > max_pixels:
        raise ImageError(f"{header.format} image of {w}x{h} pixels has more than the "
                         f"{max_pixels}-pixel limit")
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageError(f"{header.format} image of {w}x{h} pixels: aspect ratio beyond the "
                         f"{MAX_ASPECT_RATIO}:1 limit")
    if size > max_file_bytes(w * h):
        raise ImageError(f"file of {size} bytes is larger than a {w}x{h} {header.format} "
                         f"image can be (limit {max_file_bytes(w * h)} bytes)")


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_size: MinSize | None = None) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB (upright by its EXIF orientation).

    Only the header is read before the checks of :func:`check_header`; then at most
    :func:`max_file_bytes` of the file. With ``min_size``, a JPEG may come back reduced
    (:class:`DecodedImage`, see :func:`reduction`).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("no such file" if not path.exists() else "not a file")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageError("empty file")

            def read(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            header = read_header(read)
            check_header(header, size, max_pixels)
            f.seek(0)
            limit = max_file_bytes(header.width * header.height)
            data = f.read(limit + 1)
    except OSError as exc:
        raise ImageError(f"cannot read the file ({exc.strerror or exc})") from None
    check_header(header, len(data), max_pixels)
    return _decode(np.frombuffer(data, np.uint8), header, max_pixels, min_size)


def decode_image(data: bytes | np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS,
                 min_size: MinSize | None = None) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...; content decides) as HxWx3 uint8 RGB.

    The one decoder behind every entry point (files, server requests, dataset rows),
    with the same header checks and ``min_size`` as :func:`read_image`.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(data, dtype=np.uint8)
    elif not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ImageError(f"expected encoded image bytes, got {type(data).__name__}")
    data = data.reshape(-1)
    if data.size == 0:
        raise ImageError("empty file")
    header = read_header(lambda offset, n: data[offset : offset + n].tobytes())
    check_header(header, data.size, max_pixels)
    return _decode(data, header, max_pixels, min_size)


def _decode(data: np.ndarray, header: ImageHeader, max_pixels: int,
            min_size: MinSize | None = None) -> np.ndarray:
    if header.format == "JPEG":
        return _decode_jpeg(data, header, reduction(header, min_size), max_pixels)
    return _decode_opencv(data, _DECODE_FLAGS, header, max_pixels)


def _decode_opencv(data: np.ndarray, flags: int, header: ImageHeader,
                   max_pixels: int) -> np.ndarray:
    image = _imdecode(data, flags, header)
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(f"image has more than the {max_pixels}-pixel limit")
    if image.shape[0] * image.shape[1] > header.width * header.height:
        raise ImageError(f"{header.format} image decoded to {image.shape[1]}x{image.shape[0]} "
                         f"pixels, more than the {header.width}x{header.height} its header "
                         "states")
    image = to_uint8(image)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(f"unsupported number of channels: {channels}")


def _imdecode(data: np.ndarray, flags: int, header: ImageHeader) -> np.ndarray:
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as exc:  # OpenCV refuses some headers by raising
        reason = str(exc).strip().splitlines()[-1][:120]
        raise ImageError(f"not a readable image ({reason})") from None
    if image is None:
        raise ImageError(f"not a readable image (corrupt or truncated {header.format} data)")
    return image


def _decode_jpeg(data: np.ndarray, header: ImageHeader, divisor: int,
                 max_pixels: int) -> np.ndarray:
    """The JPEG at 1/``divisor`` scale, upright: a :class:`DecodedImage` when reduced.

    simplejpeg decodes strictly (a warning of damaged data is an error); what it refuses
    goes to OpenCV, which decodes what it can or reports why not, as for other formats.
    """
    h, w = -(-header.height // divisor), -(-header.width // divisor)
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="RGB", min_factor=divisor,
                                       min_height=h, min_width=w)
    except ValueError:
        flags = REDUCED_DECODES[divisor] if divisor > 1 else _DECODE_FLAGS
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
        if divisor > 1:
            image = cv2.cvtColor(_imdecode(data, flags, header), cv2.COLOR_BGR2RGB)
        else:
            image = _decode_opencv(data, flags, header, max_pixels)
    if image.shape[:2] != (h, w):
        raise ImageError(f"{header.format} image decoded at 1/{divisor} scale to "
                         f"{image.shape[1]}x{image.shape[0]} pixels, not the {w}x{h} its "
                         "header states")
    image = _UPRIGHT[header.orientation](image)
    if divisor == 1:
        return image
    rgb = image.view(DecodedImage)
    rgb.full_size, rgb.reduction = header.upright_size, divisor
    return rgb


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Pixel values as 0..255, by the rule docs/robustness.md documents (never saturating).

    8-bit is kept; 16-bit unsigned maps its full range 0..65535. Any other depth (signed
    integers, floats) maps the first of these ranges that holds all its values: [0, 1]
    (floats only), [0, 255], [0, 65535], else the image's own min..max. NaN or infinite
    values are refused. Work goes in blocks of rows, so the only full-size array made is
    the 8-bit result (a 9000×9000 16-bit RGB image once took 3.9 GB of float32 temporaries).
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return _scaled(image, 0.0, 65535.0)
    is_float = np.issubdtype(image.dtype, np.floating)
    if is_float and not all(np.isfinite(block).all() for _, block in _row_blocks(image)):
        raise ImageError(f"{image.dtype} image holds NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    for top in ((1.0, 255.0, 65535.0) if is_float else (255.0, 65535.0)):
        if lo >= 0.0 and hi <= top:
            return _scaled(image, 0.0, top)
    return _scaled(image, lo, hi)


BLOCK_VALUES = 1 << 20
"""Values converted at a time by :func:`to_uint8` (4 MB of float32)."""


def _row_blocks(image: np.ndarray):
    """(first row, block of rows) covering ``image`` with about :data:`BLOCK_VALUES` each."""
    step = max(1, BLOCK_VALUES // max(1, image[:1].size))
    for r0 in range(0, image.shape[0], step):
        yield r0, image[r0 : r0 + step]


def _scaled(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    out = np.zeros(image.shape, np.uint8)
    if hi <= lo:
        return out
    offset, gain = np.float32(lo), np.float32(255.0 / (hi - lo))
    for r0, block in _row_blocks(image):
        scaled = block.astype(np.float32)
        scaled -= offset
        scaled *= gain
        np.rint(scaled, out=scaled)
        np.clip(scaled, 0, 255, out=scaled)
        out[r0 : r0 + len(block)] = scaled
    return out
