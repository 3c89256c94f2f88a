"""An image's format and size from its header, read before any pixel is decoded.

A 389-byte PNG can claim 20000×20000 pixels; decoding it first and checking after costs
gigabytes. Every supported format states its size in a few bytes at a known place, so
the reader checks that before handing the data to OpenCV. Formats OpenCV also decodes
but that are not listed here (JPEG 2000, AVIF, OpenEXR, Radiance HDR, ...) are refused.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WebP", "PNM", "Sun raster")
"""What the reader accepts (PNM: PBM, PGM, PPM, PAM and PFM)."""

MAX_JPEG_SEGMENTS = 4096
MAX_TIFF_TAGS = 4096
MAX_GIF_BLOCKS = 4096

Read = Callable[[int, int], bytes]
"""``read(offset, n)``: up to n bytes of the data at offset (fewer at its end)."""


class ImageError(ValueError):
    """An image that cannot be read or used."""


ORIENTATIONS = range(1, 9)
"""EXIF orientations: 1 upright; 2-4 mirrored or turned half-way; 5-8 with the axes swapped."""
MAX_EXIF_BYTES = 1 << 16
"""A JPEG segment holds at most 65533 bytes: the most of an Exif segment read for Orientation."""


@dataclass(frozen=True)
class ImageHeader:
    """What the header states: the stored ``width`` and ``height`` and, for a JPEG, the EXIF
    ``orientation`` the pixels are turned upright by (1 when there is none)."""

    format: str
    width: int
    height: int
    orientation: int = 1

    @property
    def upright_size(self) -> tuple[int, int]:
        """(height, width) of the image once turned upright by its orientation."""
        if self.orientation >= 5:
            return self.width, self.height
        return self.height, self.width


def _unreadable(reason: str) -> ImageError:
    return ImageError(f"not a readable image ({reason})")


def _unpack(fmt: str, read: Read, offset: int, what: str) -> tuple:
    size = struct.calcsize(fmt)
    data = read(offset, size)
    if len(data) < size:
        raise _unreadable(f"truncated {what}")
    return struct.unpack(fmt, data)


def _png(read: Read) -> tuple[int, int]:
    length, kind, width, height = _unpack(">I4sII", read, 8, "PNG header")
    if kind != b"IHDR" or length < 13:
        raise _unreadable("PNG without an IHDR chunk")
    return width, height


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag of the 0th directory of Exif data (a TIFF header and directory,
    as an APP1 segment holds them after ``Exif\0\0``), else 1."""
    if tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(min(count, MAX_TIFF_TAGS)):
            tag, kind, n = struct.unpack_from(order + "HHI", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112:
                (value,) = struct.unpack_from(order + "H", tiff, ifd + 10 + 12 * i)
                return value if kind == 3 and n >= 1 and value in ORIENTATIONS else 1
    except struct.error:  # a directory reaching beyond the segment
        return 1
    return 1


def _jpeg(read: Read) -> tuple[int, int, int]:
    """Width, height and EXIF orientation: the first frame header, and the first Exif
    segment before the scan (where libjpeg, and so OpenCV, finds it). Past the frame header
    the walk only looks for Exif: whatever it meets there is the decoder's to judge."""
    pos, size, orientation = 2, None, None
    for _ in range(MAX_JPEG_SEGMENTS):
        head = read(pos, 4)
        if len(head) < 2 or (size is not None and (len(head) < 4 or head[0] != 0xFF)):
            break
        if head[0] != 0xFF:
            raise _unreadable("corrupt JPEG segment")
        marker = head[1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            break
        (length,) = _unpack(">H", read, pos + 2, "JPEG segment")
        if marker in _SOF and size is None:
            height, width = _unpack(">HH", read, pos + 5, "JPEG frame header")
            if height == 0:
                raise _unreadable("JPEG with its height in a DNL marker")
            size = width, height
        elif marker == 0xE1 and orientation is None and read(pos + 4, 6) == b"Exif\0\0":
            orientation = _exif_orientation(read(pos + 10, min(max(length - 8, 0), MAX_EXIF_BYTES)))
        if length < 2:
            if size is not None:
                break
            raise _unreadable("corrupt JPEG segment length")
        pos += 2 + length
    if size is None:
        raise _unreadable("JPEG without a frame header")
    return (*size, orientation or 1)


def _bmp(read: Read) -> tuple[int, int]:
    (header,) = _unpack("<I", read, 14, "BMP header")
    if header == 12:
        return _unpack("<HH", read, 18, "BMP header")
    if header < 16:
        raise _unreadable(f"BMP with an unknown header size {header}")
    width, height = _unpack("<ii", read, 18, "BMP header")
    if width <= 0:
        raise _unreadable(f"BMP with width {width}")
    return width, abs(height)


def _skip_sub_blocks(read: Read, pos: int) -> int:
    for _ in range(MAX_GIF_BLOCKS * 64):
        (size,) = _unpack("B", read, pos, "GIF block")
        pos += 1 + size
        if size == 0:
            return pos
    raise _unreadable("GIF with too many blocks")


def _gif(read: Read) -> tuple[int, int]:
    """The logical screen, grown to the first frame if that frame reaches beyond it."""
    width, height, flags = _unpack("<HHB", read, 6, "GIF header")
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    for _ in range(MAX_GIF_BLOCKS):
        (kind,) = _unpack("B", read, pos, "GIF block")
        if kind == 0x2C:
            left, top, w, h = _unpack("<HHHH", read, pos + 1, "GIF frame")
            return max(width, left + w), max(height, top + h)
        if kind != 0x21:
            break
        pos = _skip_sub_blocks(read, pos + 2)
    raise _unreadable("GIF without a frame")


_TIFF_TYPES = {3: "H", 4: "I", 16: "Q"}  # SHORT, LONG, LONG8
MAX_TIFF_DIRECTORIES = 64
"""Directories (pages) of a TIFF whose sizes are compared; the decoder reads the first."""


def _tiff_directory(read: Read, order: str, big: bool, ifd: int) -> tuple[int, int, int]:
    """Width, height and the next directory's offset of the directory at ``ifd``.

    A repeated width or height tag is refused: libtiff (OpenCV's decoder) keeps the first
    copy, other readers the last, so such a header has no one size to check.
    """
    count_fmt, entry_fmt, entry_size = ("Q", "HHQ8s", 20) if big else ("H", "HHI4s", 12)
    (count,) = _unpack(order + count_fmt, read, ifd, "TIFF directory")
    start = ifd + struct.calcsize(count_fmt)
    found: dict[int, int] = {}
    for i in range(min(count, MAX_TIFF_TAGS)):
        tag, kind, n, value = _unpack(order + entry_fmt, read, start + i * entry_size,
                                      "TIFF directory")
        if tag in (256, 257):
            if tag in found:
                raise _unreadable(f"TIFF with a repeated {'width' if tag == 256 else 'height'}"
                                  " tag")
            if kind in _TIFF_TYPES and n >= 1:
                code = _TIFF_TYPES[kind]
                found[tag] = struct.unpack_from(order + code, value.ljust(8, b"\0"))[0]
    if 256 not in found or 257 not in found:
        raise _unreadable("TIFF without its width and height")
    nxt = read(start + count * entry_size, 8 if big else 4)
    following = struct.unpack(order + ("Q" if big else "I"), nxt)[0] if len(nxt) == (
        8 if big else 4) else 0
    return found[256], found[257], following


def _tiff(read: Read) -> tuple[int, int]:
    """The first directory's size (the one OpenCV decodes); refused if a later directory
    states another size, since a reader taking that one would not decode what was checked."""
    order = "<" if read(0, 2) == b"II" else ">"
    (version,) = _unpack(order + "H", read, 2, "TIFF header")
    big = version == 43
    (ifd,) = _unpack(order + ("Q" if big else "I"), read, 8 if big else 4, "TIFF header")
    seen = {ifd}
    width, height, ifd = _tiff_directory(read, order, big, ifd)
    for _ in range(MAX_TIFF_DIRECTORIES - 1):
        if ifd == 0 or ifd in seen:
            break
        seen.add(ifd)
        w, h, ifd = _tiff_directory(read, order, big, ifd)
        if (w, h) != (width, height):
            raise _unreadable(f"TIFF with directories of different sizes ({width}x{height}, "
                              f"{w}x{h})")
    return width, height


def _webp(read: Read) -> tuple[int, int]:
    kind = read(12, 4)
    if kind == b"VP8 ":
        if read(23, 3) != b"\x9d\x01\x2a":
            raise _unreadable("corrupt WebP (VP8) header")
        w, h = _unpack("<HH", read, 26, "WebP header")
        return w & 0x3FFF, h & 0x3FFF
    if kind == b"VP8L":
        signature, bits = _unpack("<BI", read, 20, "WebP header")
        if signature != 0x2F:
            raise _unreadable("corrupt WebP (VP8L) header")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        data = read(24, 6)
        if len(data) < 6:
            raise _unreadable("truncated WebP header")
        return int.from_bytes(data[:3], "little") + 1, int.from_bytes(data[3:], "little") + 1
    raise _unreadable("WebP of an unknown kind")


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\d{1,10})")


def _pnm(read: Read) -> tuple[int, int]:
    head = read(0, 1024)
    if head[:2] == b"P7":
        fields = dict(re.findall(rb"^(WIDTH|HEIGHT)[ \t]+(\d{1,10})", head, re.MULTILINE))
        if b"WIDTH" not in fields or b"HEIGHT" not in fields:
            raise _unreadable("PAM without WIDTH and HEIGHT")
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    values, pos = [], 2
    for _ in range(2):
        match = _PNM_TOKEN.match(head, pos)
        if not match:
            raise _unreadable("PNM header without width and height")
        values.append(int(match.group(1)))
        pos = match.end()
    return values[0], values[1]


def _sun(read: Read) -> tuple[int, int]:
    width, height = _unpack(">ii", read, 4, "Sun raster header")
    return width, height


_SIGNATURES: list[tuple[Callable[[bytes], bool], str, Callable[[Read], tuple[int, ...]]]] = [
    (lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), "PNG", _png),
    (lambda b: b.startswith(b"\xff\xd8\xff"), "JPEG", _jpeg),
    (lambda b: b[:2] in (b"BM", b"BA"), "BMP", _bmp),
    (lambda b: b[:6] in (b"GIF87a", b"GIF89a"), "GIF", _gif),
    (lambda b: b[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"), "TIFF", _tiff),
    (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "WebP", _webp),
    (lambda b: re.match(rb"P[1-7]\s|P[Ff]\s", b[:3]) is not None, "PNM", _pnm),
    (lambda b: b.startswith(b"\x59\xa6\x6a\x95"), "Sun raster", _sun),
]


def read_header(read: Read) -> ImageHeader:
    """The format, width and height the data's header states; :class:`ImageError` if none."""
    magic = read(0, 16)
    for matches, name, parse in _SIGNATURES:
        if matches(magic):
            width, height, *orientation = parse(read)
            if width <= 0 or height <= 0:
                raise _unreadable(f"{name} header states a size of {width}x{height}")
            return ImageHeader(name, int(width), int(height), *orientation)
    raise _unreadable(f"unknown or unsupported format; the reader takes {', '.join(FORMATS)}")
