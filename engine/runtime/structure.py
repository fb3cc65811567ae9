"""What a file's structure announces, read without a parser: a few fields at fixed places, or
a walk that counts and allocates nothing. Two uses:

- a server admits an upload by the pixels its PNG, JPEG or BMP header announces
  (`peek_pixels`) before any decoder sees it;
- a decode worker refuses a file whose structure lies before the parser that would believe it
  allocates (`check_tiff`: more strips than rows; `check_dicom`: more data elements than any
  radiograph has, or a compressed frame larger than the header's Rows x Columns).

These are cheap first refusals. The guarantee is the decode worker's memory limit
(engine.runtime.sandbox): a lie not caught here is caught there.
"""

from __future__ import annotations

import math
import struct

from pneumo_onnx.engine.errors import ImageError

PEEK_SEGMENTS = 64  # a JPEG's frame header comes after a few APPn and DQT segments
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
MAX_TIFF_ENTRIES = 1000  # tags in a TIFF directory (a radiograph's has a few dozen)
# Data elements and items in a DICOM file, nested ones included: a radiograph has a few
# hundred, a study-rich header a few thousand. pydicom builds an object for each.
MAX_DICOM_ELEMENTS = 50_000
MAX_DICOM_DEPTH = 32  # sequences within sequences
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE00D), (0xFFFE, 0xE0DD)
_PIXEL_DATA = (0x7FE0, 0x0010)


def peek_pixels(data: bytes) -> int | None:
    """The pixel count a PNG, JPEG or BMP header announces; None for other formats, or when
    the header is not where it should be (a decoder reads it then)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack_from(">II", data, 16)
        return int(width * height)
    if data.startswith(b"BM") and len(data) >= 26:
        (size,) = struct.unpack_from("<I", data, 14)
        if size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sides
            width, height = struct.unpack_from("<HH", data, 18)
        else:
            width, height = struct.unpack_from("<ii", data, 18)
        return abs(width * height)
    size = jpeg_size(data)
    return None if size is None else size[0] * size[1]


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG or JPEG-LS stream's frame header, from a walk of at most
    PEEK_SEGMENTS segments; None if there is none by then."""
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    for _ in range(PEEK_SEGMENTS):
        while at + 1 < len(data) and data[at] == 0xFF and data[at + 1] == 0xFF:
            at += 1  # fill bytes
        if at + 4 > len(data) or data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in _SOF and at + 9 <= len(data):
            height, width = struct.unpack_from(">HH", data, at + 5)
            return int(width), int(height)
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:
            at += 2
            continue
        at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return None


def frame_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) of a compressed DICOM frame as its own codec header says: JPEG,
    JPEG-LS, a JPEG 2000 codestream or JP2 file; None for others (RLE follows the header)."""
    if frame.startswith(b"\xff\x4f\xff\x51") and len(frame) >= 24:  # SOC, SIZ
        xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", frame, 8)
        return int(xsiz - xo), int(ysiz - yo)
    if frame[4:12] == b"jP  \r\n\x87\n":  # a JP2 file: its ihdr box
        at = frame.find(b"ihdr")
        if at >= 0 and at + 12 <= len(frame):
            height, width = struct.unpack_from(">II", frame, at + 4)
            return int(width), int(height)
        return None
    return jpeg_size(frame)


def check_tiff(data: bytes, name: str) -> None:
    """Refuse a classic TIFF whose first directory lists more strips (or tiles) than its
    image has rows of strips (or tiles): Pillow builds one tile per entry as it opens it."""
    order = "<" if data[:2] == b"II" else ">"
    (at,) = struct.unpack_from(order + "I", data, 4)
    if at + 2 > len(data):
        return  # Pillow says what is wrong with it
    (count,) = struct.unpack_from(order + "H", data, at)
    if count > MAX_TIFF_ENTRIES:
        raise ImageError(f"{name}: its TIFF directory has {count} entries: refused")
    values: dict[int, int] = {}
    counts: dict[int, int] = {}
    for i in range(count):
        entry = at + 2 + 12 * i
        if entry + 12 > len(data):
            return
        tag, kind, n = struct.unpack_from(order + "HHI", data, entry)
        counts[tag] = n
        if n == 1 and kind in (3, 4):  # SHORT, LONG
            values[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, entry + 8)[
                0
            ]
    width, length = values.get(256, 0), values.get(257, 0)
    planes = values.get(277, 1) if values.get(284, 1) == 2 else 1
    if 324 in counts:  # tiles
        across = math.ceil(width / max(1, values.get(322, 1)))
        down = math.ceil(length / max(1, values.get(323, 1)))
        expected, what, listed = across * down * planes, "tiles", counts[324]
    else:
        rows = min(values.get(278, length) or length, max(length, 1)) or 1
        expected, what, listed = math.ceil(length / rows) * planes, "strips", counts.get(273, 0)
    if listed > max(expected, 1):
        raise ImageError(
            f"{name}: its TIFF header lists {listed} {what} for a {width}x{length} px image "
            f"({expected} expected): refused"
        )


def check_dicom(data: bytes, at: int, little: bool, explicit: bool, name: str) -> None:
    """Walk the data set that starts at `at` (after the file meta), counting its data
    elements and items, nested ones included, up to the pixel data; refuse past
    MAX_DICOM_ELEMENTS or MAX_DICOM_DEPTH (pydicom would build them all, eagerly)."""
    from pydicom.datadict import dictionary_VR

    order = "<" if little else ">"
    seen = 0
    ends: list[int] = []  # where each open defined-length sequence or item ends
    undefined = 0  # open undefined-length sequences and items
    while at + 8 <= len(data):
        while ends and at >= ends[-1]:
            ends.pop()
        group, element = struct.unpack_from(order + "HH", data, at)
        seen += 1
        if seen > MAX_DICOM_ELEMENTS:
            raise ImageError(
                f"{name} holds more than {MAX_DICOM_ELEMENTS} data elements (a radiograph has "
                "a few hundred): refused"
            )
        if len(ends) + undefined > MAX_DICOM_DEPTH:
            raise ImageError(f"{name} nests sequences deeper than {MAX_DICOM_DEPTH}: refused")
        tag = (group, element)
        if group == 0xFFFE:  # items and delimiters have no VR
            (length,) = struct.unpack_from(order + "I", data, at + 4)
            at += 8
            if tag in (_ITEM_END, _SEQUENCE_END):
                undefined = max(0, undefined - 1)
            elif length == _UNDEFINED:
                undefined += 1
            else:
                ends.append(at + length)  # a defined-length item: walk into it
            continue
        if tag == _PIXEL_DATA and not ends and not undefined:
            return
        vr = data[at + 4 : at + 6] if explicit else b""
        if explicit and vr in _LONG_VRS:
            (length,) = struct.unpack_from(order + "I", data, at + 8)
            at += 12
        elif explicit:
            (length,) = struct.unpack_from(order + "H", data, at + 6)
            at += 8
        else:
            (length,) = struct.unpack_from(order + "I", data, at + 4)
            at += 8
            vr = _implicit_vr(dictionary_VR, tag)
        if length == _UNDEFINED:
            undefined += 1  # a sequence (or encapsulated data, whose fragments are items)
        elif vr == b"SQ":
            ends.append(at + length)  # walk into its items
        else:
            at += length


def _implicit_vr(dictionary_vr: object, tag: tuple[int, int]) -> bytes:
    try:
        return str(dictionary_vr((tag[0] << 16) | tag[1])).encode()  # type: ignore[operator]
    except KeyError:
        return b"UN"
