"""Reading untrusted image files: bounded memory, EXIF orientation, every pixel depth."""

from __future__ import annotations

import io
import json
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg

from conftest import BIN, subprocess_env
from reciprocam_ir import ReciproCAM
from reciprocam_ir.image_header import ImageHeader
from reciprocam_ir.image_reader import (
    MAX_ASPECT_RATIO,
    REDUCED_DECODES,
    DecodedImage,
    reduction,
    to_uint8,
)
from reciprocam_ir.preprocess import (
    DECODE_MARGIN,
    ImageError,
    Preprocessing,
    decode_image,
    read_image,
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """An 8-bit grey PNG of zeros, built by hand (an ``idat`` of b"" claims the size only)."""
    if idat is None:
        stream = zlib.compressobj(9)
        raw = (width + 1) * height
        step = 1 << 24
        idat = b"".join([stream.compress(bytes(min(step, raw - i))) for i in range(0, raw, step)]
                        + [stream.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


MEASURE = """
import json, resource, sys
from reciprocam_ir.preprocess import ImageError, Preprocessing, read_image
if int(sys.argv[2]):
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    x = Preprocessing(size=(224, 224), resize_size=256)(read_image(sys.argv[1]))
    result = "ok " + "x".join(map(str, x.shape))
except ImageError as exc:
    result = "refused: " + str(exc)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"result": result, "grew_mb": grew}))
"""


def read_in_subprocess(path: Path, address_space: int = 0) -> dict:
    """Read and preprocess ``path`` in a fresh process; its result and peak-RSS growth (MB)."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(address_space)],
                          capture_output=True, text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A real, decodable 389 KB PNG of 20000×20000 pixels (400 MB once decoded)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    path.write_bytes(grey_png(20000, 20000))
    return path


def test_decompression_bomb_is_refused_from_its_header(bomb):
    """It used to be decoded first (0.4-0.9 GB) and refused after."""
    measured = read_in_subprocess(bomb)
    assert measured["result"] == ("refused: PNG image of 20000x20000 pixels has more than the "
                                  "100000000-pixel limit")
    assert measured["grew_mb"] < 50, measured


def test_decode_image_refuses_a_header_claim_before_decoding():
    claim = grey_png(20000, 20000, idat=b"")
    assert len(claim) < 100
    with pytest.raises(ImageError, match="more than the 100000000-pixel limit"):
        decode_image(claim)
    with pytest.raises(ImageError, match="more than the 400-pixel limit"):
        decode_image(grey_png(30, 30), max_pixels=400)


def test_long_strip_is_preprocessed_without_resizing_all_of_it(tmp_path):
    """16×16000 at 256/224 used to be resized whole to 256×256000 before the crop."""
    path = tmp_path / "strip.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (16, 16000), np.uint8))
    measured = read_in_subprocess(path)
    assert measured["result"] == "ok 1x3x224x224"
    assert measured["grew_mb"] < 50, measured


def test_absurd_aspect_ratio_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "line.png"), np.zeros((1, 16000), np.uint8))
    with pytest.raises(ImageError, match=f"aspect ratio beyond the {MAX_ASPECT_RATIO}:1 limit"):
        read_image(tmp_path / "line.png")


def test_huge_files_are_not_read_whole(tmp_path):
    """A 2 GB non-image file, and a 2 GB file behind a small PNG's header (sparse files)."""
    junk, padded = tmp_path / "junk.bin", tmp_path / "padded.png"
    for path, start in ((junk, b"\0"), (padded, grey_png(8, 8))):
        with path.open("wb") as f:
            f.write(start)
            f.truncate(2**31)
    measured = read_in_subprocess(junk, address_space=2**31)
    assert measured["result"].startswith("refused: not a readable image (unknown or unsupported")
    assert measured["grew_mb"] < 50
    measured = read_in_subprocess(padded, address_space=2**31)
    assert measured["result"].startswith("refused: file of 2147483648 bytes is larger than a "
                                         "8x8 PNG image can be")
    assert measured["grew_mb"] < 50


def _exif_jpeg(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF segment (written here by hand, little-endian TIFF) holding
    Orientation."""
    tiff = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack(
        "<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A JPEG of ``rgb`` whose EXIF holds Orientation."""
    jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return _exif_jpeg(jpeg, orientation)


UPRIGHT = {  # EXIF 2.3: where the stored 0th row and column belong on display
    1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1), 8: lambda a: np.rot90(a, 1),
}


def _quadrants(height: int, width: int) -> np.ndarray:
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[: height // 2, : width // 2] = (255, 0, 0)
    rgb[: height // 2, width // 2 :] = (0, 255, 0)
    rgb[height // 2 :, : width // 2] = (0, 0, 255)
    rgb[height // 2 :, width // 2 :] = 255
    return rgb


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    stored = _quadrants(300, 451)
    path = tmp_path / "phone.jpg"
    path.write_bytes(_jpeg_with_orientation(stored, orientation))
    rgb = read_image(path)
    expected = UPRIGHT[orientation](stored)
    assert rgb.shape == expected.shape
    assert np.abs(rgb.astype(float) - expected).mean() < 4


def test_exif_rotated_photo_is_explained_upright_and_strip_refused_under_3gb(
        resnet18_dir, tmp_path):
    """Through the CLI, under a 3 GB address-space limit: the 1×16000 strip is one line of
    error (it was a cv2.error traceback) and the phone photo next to it is still explained,
    its overlay upright (451×300, not 300×451)."""
    cv2.imwrite(str(tmp_path / "strip.png"), np.zeros((1, 16000), np.uint8))
    (tmp_path / "phone.jpg").write_bytes(_jpeg_with_orientation(_quadrants(300, 451), 6))
    out = tmp_path / "out"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    proc = subprocess.run([str(BIN / "reciprocam"), "explain", str(resnet18_dir),
                           str(tmp_path / "strip.png"), str(tmp_path / "phone.jpg"),
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=subprocess_env(),
                          preexec_fn=limit)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert "strip.png" in errors[0] and "aspect ratio" in errors[0]
    assert "Traceback" not in proc.stderr
    (overlay,) = out.glob("phone_*.png")
    assert cv2.imread(str(overlay)).shape[:2] == (451, 300)
    exp = ReciproCAM(resnet18_dir).explain(tmp_path / "phone.jpg")
    assert exp.images[0].shape[:2] == (451, 300)


@pytest.fixture()
def rgb():
    return np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)


def test_reads_colour_grey_rgba_and_16_bit(tmp_path, rgb):
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "c.png"), bgr)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)
    grey = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.dstack([grey] * 3))
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    cv2.imwrite(str(tmp_path / "w.png"), bgr.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(tmp_path / "w.png"), rgb)
    (tmp_path / "png_named.jpg").write_bytes((tmp_path / "c.png").read_bytes())
    np.testing.assert_array_equal(read_image(tmp_path / "png_named.jpg"), rgb)
    data = (tmp_path / "c.png").read_bytes()
    np.testing.assert_array_equal(decode_image(data), rgb)
    np.testing.assert_array_equal(decode_image(np.frombuffer(data, np.uint8)), rgb)


@pytest.mark.parametrize("dtype, values, expected", [
    (np.int32, [0, 100, 200], [0, 100, 200]),            # fits 0..255: kept (was 0, 255, 255)
    (np.float32, [0.0, 100.0, 200.0], [0, 100, 200]),    # floats in 0..255 (was all 255)
    (np.float32, [0.0, 0.5, 1.0], [0, 128, 255]),        # floats in [0, 1]: x 255
    (np.int32, [0, 1000, 65535], [0, 4, 255]),           # 16-bit data in 32 bits
    (np.int32, [-100, 0, 100], [0, 128, 255]),           # anything else: its own range
    (np.float32, [-1.0, 0.0, 3.0], [0, 64, 255]),
    (np.int16, [-5, 0, 5], [0, 128, 255]),
])
def test_high_bit_depth_tiffs_are_scaled_not_saturated(tmp_path, dtype, values, expected):
    image = np.repeat(np.asarray(values, dtype)[None, :], 4, axis=0)
    cv2.imwrite(str(tmp_path / "deep.tiff"), image)
    rgb = read_image(tmp_path / "deep.tiff")
    np.testing.assert_array_equal(rgb[0, :, 0], expected)


def test_float_tiff_with_nan_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "nan.tiff"), np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(ImageError, match="NaN or infinite"):
        read_image(tmp_path / "nan.tiff")
    assert to_uint8(np.full((2, 2), 7.0, np.float64)).tolist() == [[7, 7], [7, 7]]


def test_unreadable_files(tmp_path, rgb):
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "text.png")
    with pytest.raises(ImageError, match="not a file"):
        read_image(tmp_path)
    cv2.imwrite(str(tmp_path / "big.png"), rgb)
    with pytest.raises(ImageError, match="pixel limit"):
        read_image(tmp_path / "big.png", max_pixels=100)
    data = cv2.imencode(".png", rgb)[1].tobytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "cut.png")


def test_header_with_absurd_size_is_refused_not_raised(tmp_path, rgb):
    """Found by the fuzz test: OpenCV raises (rather than returns None) on such headers."""
    data = bytearray(cv2.imencode(".bmp", rgb)[1].tobytes())
    data[18:22] = (2**24).to_bytes(4, "little")  # BMP width
    (tmp_path / "wide.bmp").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="pixel limit"):
        read_image(tmp_path / "wide.bmp")
    data[18:22] = (2**12).to_bytes(4, "little")  # a width the data does not hold
    (tmp_path / "short.bmp").write_bytes(bytes(data))
    with pytest.raises(ImageError, match="not a readable image"):
        read_image(tmp_path / "short.bmp")


def _to_uint8_before(image: np.ndarray) -> np.ndarray:
    """to_uint8's arithmetic as it was at 856037d: whole-image float32 temporaries."""
    if image.dtype == np.uint16:
        lo, hi = 0.0, 65535.0
    else:
        is_float = np.issubdtype(image.dtype, np.floating)
        lo, hi = float(image.min()), float(image.max())
        for top in ((1.0, 255.0, 65535.0) if is_float else (255.0, 65535.0)):
            if lo >= 0.0 and hi <= top:
                lo, hi = 0.0, top
                break
    scaled = (image.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("dtype, low, high", [
    (np.uint16, 0, 65536), (np.int32, 0, 256), (np.int32, -70000, 70000),
    (np.float32, 0.0, 1.0), (np.float64, -3.0, 9000.0), (np.int16, -5, 6),
])
def test_to_uint8_in_blocks_equals_the_whole_image_arithmetic(dtype, low, high):
    """Issue 23 item 3: the same values as before, block boundaries included (an odd width
    makes blocks of unequal rows)."""
    rng = np.random.default_rng(3)
    shape = (700, 1531, 3)
    if np.issubdtype(dtype, np.floating):
        image = rng.uniform(low, high, shape).astype(dtype)
    else:
        image = rng.integers(low, high, shape).astype(dtype)
    image[0, 0, 0] = low  # the range's ends are present
    np.testing.assert_array_equal(to_uint8(image), _to_uint8_before(image))


def test_to_uint8_makes_no_full_size_float_temporaries():
    """A 16-bit 3000×2000 RGB image: at most the 18 MB result plus a block (it was 4 float32
    copies, ~290 MB)."""
    import tracemalloc

    image = np.random.default_rng(4).integers(0, 65536, (2000, 3000, 3)).astype(np.uint16)
    tracemalloc.start()
    try:
        to_uint8(image)
        to_uint8(image.view(np.int16))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < image.size + 16 * 2**20, peak / 2**20


# ---------------------------------------------------------------- shrink on load (issue 26)

DIRECT = Preprocessing(size=(224, 224), resize="direct")  # Lite0's recipe
CROP = Preprocessing(size=(224, 224), resize_size=256)


WIDE = Preprocessing(size=(224, 896), resize="direct")


@pytest.mark.parametrize("fmt, width, height, orientation, p, divisor", [
    ("JPEG", 4032, 3024, 1, DIRECT, 4),  # 1008x756 leaves 3 x 224; 504x378 would not
    ("JPEG", 3024, 4032, 1, DIRECT, 4),  # portrait
    ("JPEG", 4032, 3024, 1, CROP, 2),    # 3 x 341x256 is more than 1008x756
    ("JPEG", 8000, 6000, 1, DIRECT, 8),
    ("JPEG", 2000, 1500, 1, DIRECT, 2),
    ("JPEG", 1000, 750, 1, DIRECT, 1),   # 500x375 is less than 3 x 224
    ("JPEG", 6000, 1200, 1, CROP, 1),    # the short side decides: 256 x 3 = 768 > 600
    ("JPEG", 5400, 5393, 1, DIRECT, 8),  # decoded square at 1/8: the header says how it turns
    ("JPEG", 6000, 4000, 1, WIDE, 2),    # 2000x3000 holds 3 x 224x896
    ("JPEG", 6000, 4000, 6, WIDE, 1),    # upright it is 3000x2000 at 1/2: too narrow
    ("PNG", 4032, 3024, 1, DIRECT, 1),   # only JPEG decodes at a smaller scale
    ("WebP", 4032, 3024, 1, DIRECT, 1),
], ids=str)
def test_decode_scale_is_the_smallest_leaving_the_margin(fmt, width, height, orientation, p,
                                                          divisor):
    assert DECODE_MARGIN == 3
    header = ImageHeader(fmt, width, height, orientation)
    assert reduction(header, p.min_decode_size) == divisor
    assert reduction(header, None) == 1


@pytest.fixture(scope="module")
def photo_2mp() -> np.ndarray:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from sample_images import sample_images

    return cv2.resize(sample_images()["astronaut"], (2000, 1500), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_reduced_decode_applies_exif_and_keeps_the_full_upright_size(photo_2mp, orientation):
    data = _jpeg_with_orientation(photo_2mp, orientation)
    full = decode_image(data)
    small = decode_image(data, min_size=DIRECT.min_decode_size)
    assert isinstance(small, DecodedImage) and small.reduction == 2
    assert small.full_size == full.shape[:2] == UPRIGHT[orientation](photo_2mp).shape[:2]
    assert small.shape[:2] == (full.shape[0] // 2, full.shape[1] // 2)
    halved = cv2.resize(full, small.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(halved.astype(float) - small).mean() < 2


def test_reduced_decode_keeps_the_header_checks_before_decoding(tmp_path):
    """A 20000x20000 JPEG claim (a few bytes) is refused from its header as before; nothing
    is decoded at any scale."""
    claim = b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 8, 20000, 20000, 1) + bytes(3)
    with pytest.raises(ImageError, match="more than the 100000000-pixel limit"):
        decode_image(claim, min_size=DIRECT.min_decode_size)
    (tmp_path / "claim.jpg").write_bytes(claim)
    with pytest.raises(ImageError, match="more than the 100000000-pixel limit"):
        read_image(tmp_path / "claim.jpg", min_size=DIRECT.min_decode_size)
    with pytest.raises(ImageError, match="aspect ratio"):
        decode_image(b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 8, 2, 20000, 1) + bytes(3),
                     min_size=DIRECT.min_decode_size)


def _opencv(data: bytes | np.ndarray, flag: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """What OpenCV's own decoder gives, EXIF applied: the reader's JPEG path before simplejpeg."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), flag), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("params", [
    [cv2.IMWRITE_JPEG_QUALITY, 92],
    [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
    [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422],
    "grey",
], ids=["420", "progressive", "444", "422", "grey"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_pixels_are_opencvs_at_every_scale_and_orientation(photo_2mp, params, orientation):
    """simplejpeg decodes what OpenCV decoded, bit for bit, upright by the same EXIF rule, at
    full scale and each DCT scale (an odd size, so the scaled sizes round up)."""
    rgb = photo_2mp[:1001, :1333]
    if params == "grey":
        jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))[1].tobytes()
    else:
        jpeg = cv2.imencode(".jpg", rgb, params)[1].tobytes()
    data = _exif_jpeg(jpeg, orientation)
    np.testing.assert_array_equal(decode_image(data), _opencv(data))
    for divisor, flag in REDUCED_DECODES.items():
        small = decode_image(data, min_size=lambda h, w, d=divisor: (-(-h // d), -(-w // d)))
        assert small.reduction == divisor
        np.testing.assert_array_equal(small, _opencv(data, flag))


def test_cmyk_and_damaged_jpegs_decode_as_opencv_decodes_them():
    """A CMYK JPEG, and a damaged one that simplejpeg refuses (it is strict) and OpenCV
    decodes in part: what OpenCV gives, upright by their EXIF."""
    from PIL import Image

    rgb = _quadrants(60, 90)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    cmyk = _exif_jpeg(buffer.getvalue(), 6)
    np.testing.assert_array_equal(decode_image(cmyk), _opencv(cmyk))
    assert decode_image(cmyk).shape == (90, 60, 3)
    whole = _jpeg_with_orientation(rgb, 3)
    damaged = whole[: len(whole) // 2] + whole[-2:]
    with pytest.raises(ValueError):
        simplejpeg.decode_jpeg(damaged, colorspace="RGB")
    np.testing.assert_array_equal(decode_image(damaged), _opencv(damaged))


def test_exact_decode_and_other_formats_are_unchanged(photo_2mp, tmp_path):
    """Without min_size (decode='exact') and for non-JPEG data, the reader returns what it
    always did: OpenCV's full decode, a plain array."""
    jpeg = cv2.imencode(".jpg", photo_2mp)[1]
    png = cv2.imencode(".png", photo_2mp)[1]
    full = decode_image(jpeg)
    assert type(full) is np.ndarray
    np.testing.assert_array_equal(full, _opencv(jpeg))
    from_png = decode_image(png, min_size=DIRECT.min_decode_size)
    assert type(from_png) is np.ndarray
    np.testing.assert_array_equal(from_png, photo_2mp[..., ::-1])  # encoded as if BGR


def test_decode_memory_script_runs():
    """Smoke test of scripts/decode_memory.py (docs/robustness.md's numbers, at 600x600)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "decode_memory.py"
    proc = subprocess.run([sys.executable, str(script), "--side", "600"], capture_output=True,
                          text=True, timeout=120, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "previous" in proc.stdout and "ratio now/previous" in proc.stdout
