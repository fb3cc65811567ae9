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
