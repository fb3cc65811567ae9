"""Hostile and extreme request payloads, built in memory and small on the wire: images that
decode to far more than they weigh, DICOM bombs. The `limits` suite measures the server's
memory under them, and the serving tests attack with them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png(mode: str, side: int, value: int | tuple[int, ...] = 128, extra: bytes = b"") -> bytes:
    """A PNG that compresses to almost nothing and decodes to side x side pixels; `extra`
    after the end makes its bytes (and cache key) unique."""
    buf = io.BytesIO()
    Image.new(mode, (side, side), value).save(buf, "PNG")
    return buf.getvalue() + extra


def make_dicom(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits: int = 16,
    **tags: object,
) -> bytes:
    """An uncompressed 16-bit DICOM X-ray of `pixels` (bits stored: `bits`), any tag settable."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def rle_dicom(side: int) -> bytes:
    """A side x side 16-bit DICOM in the RLE Lossless syntax, its PackBits segments written
    directly (a run of 128 equal bytes is 2 bytes), so an 80 Mpx image is a 4 MB file."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    full, rest = divmod(side, 128)

    def row(value: int) -> bytes:  # one row of one byte plane, runs within the row
        v = bytes([value])
        return (b"\x81" + v) * full + (bytes([rest - 1]) + v * rest if rest else b"")

    # MSB plane, then LSB plane: rows of 3000 and 440 in turn (side is even)
    segments = [(row(0x0B) + row(0x01)) * (side // 2), row(0xB8) * side]
    offsets = [64, 64 + len(segments[0])]
    header = struct.pack("<16I", len(segments), *offsets, *([0] * 13))
    frame = header + b"".join(segments)
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((64, 64), np.uint16), bits=12)))
    ds.Rows = ds.Columns = side
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def deflated_dicom_bomb(inflated_mb: int) -> bytes:
    """A DICOM file in the Deflated transfer syntax whose dataset inflates to `inflated_mb`
    MB (pixel data of zeros), built by streaming so the test itself stays small."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    px = np.zeros((64, 64), np.uint16)
    small = io.BytesIO()
    ds = pydicom.dcmread(io.BytesIO(make_dicom(px)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    del ds.PixelData
    ds.Rows = ds.Columns = 4096
    pydicom.dcmwrite(small, ds, enforce_file_format=True)
    data = small.getvalue()
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    head, dataset = data[: fp.tell()], zlib.decompress(data[fp.tell() :], -15)
    size = inflated_mb * 2**20
    pixel_element = b"\xe0\x7f\x10\x00OW\x00\x00" + size.to_bytes(4, "little")
    packer = zlib.compressobj(1, zlib.DEFLATED, -15)
    parts = [packer.compress(dataset + pixel_element)]
    zeros = bytes(2**20)
    parts += [packer.compress(zeros) for _ in range(inflated_mb)]
    parts.append(packer.flush())
    return head + b"".join(parts)


def empty_j2k(side: int, levels: int = 5) -> bytes:
    """A valid JPEG 2000 codestream of a side x side 8-bit image of one tile whose packets are
    all empty: ~100 bytes, whatever the side (a decoder fills the image with mid-grey)."""
    siz = struct.pack(">HIIIIIIIIH", 0, side, side, 0, 0, side, side, 0, 0, 1) + bytes([7, 1, 1])
    cod = bytes([0, 0]) + struct.pack(">H", 1) + bytes([0, levels, 4, 4, 0, 1])  # 5-3, 64x64
    qcd = bytes([0x40]) + bytes([(9 + (i > 0)) << 3 for i in range(3 * levels + 1)])
    packets = b"\x00" * (levels + 1)  # one empty packet per resolution
    sot = struct.pack(">HHIBB", 10, 0, 12 + 2 + len(packets), 0, 1)
    segments = b"".join(
        marker + struct.pack(">H", len(body) + 2) + body
        for marker, body in ((b"\xff\x51", siz), (b"\xff\x52", cod), (b"\xff\x5c", qcd))
    )
    return b"\xff\x4f" + segments + b"\xff\x90" + sot + b"\xff\x93" + packets + b"\xff\xd9"


def encapsulated_dicom(side: int, codec: str = "J2K", rows: int | None = None) -> bytes:
    """An 8-bit side x side DICOM whose one frame is JPEG 2000 (all packets empty: ~100 bytes)
    or baseline JPEG (a flat grey); `rows` x `rows` in its header instead, if given."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit

    if codec == "J2K":
        frame, syntax = empty_j2k(side), JPEG2000Lossless
    else:
        buf = io.BytesIO()
        Image.new("L", (side, side), 100).save(buf, "JPEG", quality=90)
        frame, syntax = buf.getvalue(), JPEGBaseline8Bit
    ds = pydicom.dcmread(io.BytesIO(make_dicom(np.zeros((64, 64), np.uint16), bits=8)))
    ds.Rows = ds.Columns = rows or side
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def j2k_dicom_bomb(side: int = 13000) -> bytes:
    """A ~600-byte DICOM whose header says 64 x 64 and whose encapsulated JPEG 2000 frame is
    side x side: decoded at its own size (1 GB at 13000), not the header's."""
    return encapsulated_dicom(side, "J2K", rows=64)


def tiff_strip_bomb(size: int = 16 * 2**20, consistent: bool = False) -> bytes:
    """A `size`-byte 8-bit TIFF whose StripOffsets and StripByteCounts hold one SHORT entry per
    4 bytes of the file: Pillow builds one tile per entry inside Image.open. The image is
    64 x 64 px (a header that lies about its strips), or, `consistent`, 16 px wide and one
    row per strip: a header whose strips add up, refused only by the memory it takes."""
    count = (size - 256) // 4
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value or offset
        (256, 3, 1, 16 if consistent else 64),  # ImageWidth
        (257, 4, 1, count if consistent else 64),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 1),  # BlackIsZero
        (273, 3, count, 256),  # StripOffsets: count SHORTs at 256
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 3, 1, 1),  # RowsPerStrip
        (279, 3, count, 256 + 2 * count),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, n, value in entries:
        short = kind == 3 and n == 1
        packed = struct.pack("<HH", value, 0) if short else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, n) + packed
    ifd += struct.pack("<I", 0)
    head = b"II*\x00" + struct.pack("<I", 8) + ifd
    head += b"\0" * (256 - len(head))
    return head + struct.pack("<H", 255) * count + struct.pack("<H", 1) * count


def dicom_sequence_bomb(size: int = 16 * 2**20, zero_length_elements: bool = False) -> bytes:
    """A `size`-byte 64 x 64 DICOM holding one undefined-length sequence of empty items (8
    bytes each), or (`zero_length_elements`) that many zero-length private elements: pydicom
    builds an object for each, even when asked to stop before the pixels."""
    small = make_dicom(np.zeros((64, 64), np.uint16))
    at = small.index(b"\x08\x00\x60\x00")  # (0008,0060) Modality: insert before it
    if zero_length_elements:
        n = (size - len(small)) // 8
        # explicit VR little endian, 'LO' with a 2-byte length of 0: 8 bytes per element,
        # private tags (0009,1000)... in ascending order, 60000 per group
        parts = []
        for i in range(n):
            group, element = 0x0009 + 2 * (i // 60000), 0x1000 + i % 60000
            parts.append(struct.pack("<HH", group, element) + b"LO\x00\x00")
        bomb = b"".join(parts)
        at = small.index(b"\x10\x00\x10\x00") if b"\x10\x00\x10\x00" in small else at
    else:
        n = (size - len(small) - 20) // 8
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # an empty item
        bomb = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\x00\x00" + struct.pack("<I", 0xFFFFFFFF)
        bomb += item * n + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return small[:at] + bomb + small[at:]


def chunked_with_length(path: str, body_mb: int = 600) -> tuple[bytes, bytes]:
    """A request head with `Content-Length: 0` and `Transfer-Encoding: chunked` (what two
    parsers may cut differently), and one 1 MB chunk of a `body_mb` MB chunked body."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = f"{2**20:x}\r\n".encode() + b"0" * 2**20 + b"\r\n"
    return head, chunk
