"""Image sizes read from headers, before decoding: every accepted format, odd layouts."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from reciprocam_ir.image_header import ImageError, read_header


def header_of(data: bytes):
    return read_header(lambda offset, n: data[offset : offset + n])


RGB = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext, image, params, name", [
    (".png", RGB, [], "PNG"),
    (".jpg", RGB, [], "JPEG"),
    (".jpg", RGB, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "JPEG"),
    (".bmp", RGB, [], "BMP"),
    (".tiff", RGB, [], "TIFF"),
    (".tiff", RGB.astype(np.float32), [], "TIFF"),
    (".webp", RGB, [cv2.IMWRITE_WEBP_QUALITY, 80], "WebP"),   # lossy: VP8
    (".webp", RGB, [cv2.IMWRITE_WEBP_QUALITY, 101], "WebP"),  # lossless: VP8L
    (".ppm", RGB, [], "PNM"),
    (".pgm", RGB[..., 0], [], "PNM"),
    (".pam", RGB, [], "PNM"),
    (".pfm", RGB.astype(np.float32), [], "PNM"),
    (".gif", RGB, [], "GIF"),
    (".ras", RGB, [], "Sun raster"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_header_size_of_every_accepted_format(ext, image, params, name):
    ok, data = cv2.imencode(ext, image, params)
    assert ok
    header = header_of(data.tobytes())
    assert (header.format, header.width, header.height) == (name, 34, 21)


def test_jpeg_frame_header_after_large_metadata_segments():
    data = cv2.imencode(".jpg", RGB)[1].tobytes()
    app2 = b"\xff\xe2" + struct.pack(">H", 65000) + bytes(64998)
    header = header_of(data[:2] + app2 * 3 + data[2:])
    assert (header.width, header.height) == (34, 21)


def test_hand_made_headers():
    # big-endian TIFF, BigTIFF, OS/2 BMP, WebP VP8X and a GIF frame reaching past its screen
    mm = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 2) + struct.pack(
        ">HHIHH", 256, 3, 1, 640, 0) + struct.pack(">HHII", 257, 4, 1, 480)
    big = b"II+\0" + struct.pack("<HHQ", 8, 0, 16) + struct.pack("<Q", 2) + struct.pack(
        "<HHQQ", 256, 4, 1, 70000) + struct.pack("<HHQQ", 257, 3, 1, 9)
    os2 = b"BM" + bytes(12) + struct.pack("<IHH", 12, 77, 55)
    vp8x = b"RIFF" + bytes(4) + b"WEBPVP8X" + bytes(8) + (1999).to_bytes(3, "little") + (
        2999).to_bytes(3, "little")
    gif = b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b"\x21\xf9\x04" + bytes(4) + (
        b"\0\x2c" + struct.pack("<HHHH", 5, 0, 3000, 2000))
    sizes = {data: (header_of(data).width, header_of(data).height)
             for data in (mm, big, os2, vp8x, gif)}
    assert list(sizes.values()) == [(640, 480), (70000, 9), (77, 55), (2000, 3000),
                                    (3005, 2000)]


@pytest.mark.parametrize("ext", [".hdr", ".avif"])
def test_formats_opencv_reads_but_the_reader_does_not_are_refused(ext):
    data = cv2.imencode(ext, RGB.astype(np.float32) if ext == ".hdr" else RGB)[1].tobytes()
    with pytest.raises(ImageError, match="unsupported format; the reader takes PNG, JPEG"):
        header_of(data)


@pytest.mark.parametrize("data, match", [
    (b"\x89PNG\r\n\x1a\n\0\0", "truncated PNG header"),
    (b"\xff\xd8\xff\xd9", "JPEG without a frame header"),
    (b"P6\n# only a comment\n", "PNM header without width and height"),
    (b"BM" + bytes(12) + struct.pack("<Iii", 40, -5, 5), "BMP with width -5"),
    (b"GIF89a" + struct.pack("<HHBBB", 0, 4, 0, 0, 0) + b"\x2c" + bytes(8), "size of 0x4"),
    (b"hello world", "unknown or unsupported format"),
])
def test_broken_headers_are_one_line_refusals(data, match):
    with pytest.raises(ImageError, match=match) as err:
        header_of(data)
    assert "\n" not in str(err.value)


def tiff(*directories: list[tuple[int, int]], strip: bytes = b"") -> bytes:
    """A little-endian grey 8-bit TIFF: one directory per list of (tag, value) size entries
    (LONG values, in the order given), each pointing at the same one-strip deflate ``strip``."""
    sizes = [12 * (len(entries) + 7) + 6 for entries in directories]
    starts = [8 + sum(sizes[:i]) for i in range(len(sizes))]
    strip_at = 8 + sum(sizes)
    data = bytearray(b"II*\0" + struct.pack("<I", 8))
    for i, entries in enumerate(directories):
        rows = next(v for tag, v in entries if tag == 257)
        data += struct.pack("<H", len(entries) + 7)
        for tag, value in [*entries, (258, 8), (259, 8), (262, 1), (273, strip_at), (277, 1),
                           (278, rows), (279, len(strip))]:
            data += struct.pack("<HHII", tag, 4, 1, value)
        data += struct.pack("<I", starts[i + 1] if i + 1 < len(starts) else 0)
    return bytes(data) + strip


def deflate_zeros(width: int, height: int) -> bytes:
    import zlib

    return zlib.compress(bytes(width * height), 9)


def test_tiff_decoder_keeps_the_first_of_repeated_size_tags():
    """What makes repeated tags dangerous: libtiff decodes the first copy's size."""
    data = tiff([(256, 300), (256, 64), (257, 200), (257, 64)], strip=deflate_zeros(300, 200))
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).shape == (200, 300)


@pytest.mark.parametrize("entries, match", [
    ([(256, 3000), (256, 64), (257, 3000), (257, 64)], "repeated width tag"),
    ([(256, 64), (257, 3000), (257, 64)], "repeated height tag"),
])
def test_tiff_with_repeated_size_tags_is_refused_by_its_header(entries, match):
    """Issue 23 item 1: the header said 64x64 (last copy), the decoder made 3000x3000
    (12000x12000 in the report: +688 MB) before the size was refused."""
    from reciprocam_ir.image_reader import decode_image

    data = tiff(entries, strip=deflate_zeros(3000, 3000))
    with pytest.raises(ImageError, match=match):
        header_of(data)
    with pytest.raises(ImageError, match=match):
        decode_image(data, max_pixels=64 * 64)


def test_tiff_directories_of_different_sizes_are_refused():
    data = tiff([(256, 64), (257, 64)], [(256, 3000), (257, 3000)], strip=deflate_zeros(64, 64))
    with pytest.raises(ImageError, match="directories of different sizes"):
        header_of(data)
    pages = tiff([(256, 64), (257, 48)], [(256, 64), (257, 48)], strip=deflate_zeros(64, 48))
    assert (header_of(pages).width, header_of(pages).height) == (64, 48)


def _exif(orientation: int, order: str = "<", kind: int = 3) -> bytes:
    """An APP1 segment whose Exif 0th directory holds Orientation (after another tag)."""
    mark = b"II*\0" if order == "<" else b"MM\0*"
    entries = struct.pack(order + "HHI4s", 0x010F, 2, 4, b"cam\0") + struct.pack(
        order + "HHIHH", 0x0112, kind, 1, orientation, 0)
    tiff = mark + struct.pack(order + "IH", 8, 2) + entries + struct.pack(order + "I", 0)
    body = b"Exif\0\0" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


JPEG = cv2.imencode(".jpg", RGB)[1].tobytes()
XMP = b"\xff\xe1" + struct.pack(">H", 31) + b"http://ns.adobe.com/xap/1.0/\0"
_CUT = b"Exif\0\0II*\0" + struct.pack("<IH", 8, 40) + struct.pack("<HHI4s", 0x010F, 2, 4, b"cam\0")
CUT = b"\xff\xe1" + struct.pack(">H", len(_CUT) + 2) + _CUT
"""Exif whose directory claims 40 entries and holds one."""


@pytest.mark.parametrize("data, orientation", [
    (JPEG, 1),
    (JPEG[:2] + _exif(6) + JPEG[2:], 6),
    (JPEG[:2] + _exif(8, ">") + JPEG[2:], 8),          # big-endian TIFF
    (JPEG[:2] + XMP + _exif(3) + JPEG[2:], 3),         # XMP's APP1 first
    (JPEG[:2] + _exif(5) + _exif(2) + JPEG[2:], 5),    # the first Exif segment counts
    (JPEG[:2] + _exif(9) + JPEG[2:], 1),               # no such orientation
    (JPEG[:2] + _exif(6, kind=4) + JPEG[2:], 1),       # not a SHORT
    (JPEG[:2] + CUT + JPEG[2:], 1),                    # a directory cut short
], ids=["none", "6", "big-endian 8", "after XMP", "first of two", "9", "LONG", "cut"])
def test_jpeg_exif_orientation_from_the_header(data, orientation):
    header = header_of(data)
    assert (header.width, header.height, header.orientation) == (34, 21, orientation)
    assert header.upright_size == ((34, 21) if orientation >= 5 else (21, 34))


def test_exif_after_the_frame_header_is_found_and_damage_there_left_to_the_decoder():
    sof = JPEG.index(b"\xff\xc0")
    after = JPEG[:sof] + JPEG[sof : sof + 2 + struct.unpack(">H", JPEG[sof + 2 : sof + 4])[0]]
    rest = JPEG[len(after):]
    assert header_of(after + _exif(6) + rest).orientation == 6
    damaged = header_of(after + b"\x00garbage" + rest)  # the decoder reports it, not the header
    assert (damaged.width, damaged.height, damaged.orientation) == (34, 21, 1)


def test_a_segment_too_short_for_exif_reads_nothing_beyond_it():
    """An APP1 whose length (6) ends inside its own "Exif\\0\\0" mark: no read of a negative
    size (a file's read(-n) returns the whole file) and orientation 1."""
    sof = JPEG.index(b"\xff\xc0")
    end = sof + 2 + struct.unpack(">H", JPEG[sof + 2 : sof + 4])[0]
    data = JPEG[:end] + b"\xff\xe1\x00\x06Exif\0\0" + JPEG[end:]
    sizes = []

    def read(offset: int, n: int) -> bytes:
        sizes.append(n)
        return data[offset : offset + n]

    assert read_header(read).orientation == 1
    assert min(sizes) >= 0
