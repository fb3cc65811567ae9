"""What a job upload may hold: images, or .zip archives of images, unpacked one member at a
time within the bounds of the whole request (entries, unpacked bytes, bytes per image,
compression ratio of each member and of each archive), so that no request can exhaust memory
or disk, whatever it splits its content into. An archive is opened in a decode worker
(`unpack_task`, engine.runtime.sandbox): reading its central directory builds one object per
entry, however many its header admits to."""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO

from pneumo_onnx.engine.errors import UsageError
from pneumo_onnx.engine.runtime.listing import IMAGE_SUFFIXES
from pneumo_onnx.engine.runtime.sandbox import TaskContext

MAX_MEMBERS = 10_000
# X-rays barely compress (JPEG, PNG) or compress a few times (BMP, DICOM): a member, or an
# archive, that shrank more than 100x and is 1 MB or more unpacked is a decompression bomb.
MAX_RATIO = 100
RATIO_MIN_BYTES = 2**20
UPLOAD_SUFFIXES = IMAGE_SUFFIXES


@dataclass
class UploadBudget:
    """The bounds of one request, shared by all its files: images, unpacked bytes, and the
    size of any one image."""

    max_total_bytes: int  # the server's --max-job-mb
    max_image_bytes: int  # its --max-upload-mb
    max_images: int = MAX_MEMBERS
    images: int = 0
    total_bytes: int = 0

    def take(self, label: str, size: int) -> None:
        self.images += 1
        self.total_bytes += size
        if self.images > self.max_images:
            raise UsageError(f"a job request holds at most {self.max_images} images")
        if size > self.max_image_bytes:
            raise UsageError(
                f"{label} is {_mb(size)}; one image may be at most {_mb(self.max_image_bytes)}"
            )
        if self.total_bytes > self.max_total_bytes:
            raise UsageError(
                f"the images of this job request unpack to more than "
                f"{_mb(self.max_total_bytes)}: split it into several jobs"
            )


def items_from_upload(
    filename: str,
    data: bytes | BinaryIO,
    budget: UploadBudget,
) -> Iterator[tuple[str, bytes]]:
    """An uploaded file as job items, one at a time: the images of a .zip archive, or the one
    image. `budget` bounds the whole request across its files.

    Archive members that are folders, macOS metadata or not image files are skipped; names
    keep their folders but lose any '..', drive or leading '/'. Refused with a UsageError: an
    empty upload, a corrupt or encrypted archive, a request over its budget, or a member or
    archive compressed more than MAX_RATIO times (a bomb).
    """
    stream = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    label = safe_name(filename) or "upload"
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    if not size:
        raise UsageError(f"expected an image or a .zip archive, got 0 bytes from {label}")
    head = stream.read(4)
    stream.seek(0)
    if not is_archive(filename, head):
        budget.take(label, size)
        yield label, stream.read()
        return
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise UsageError(f"{label} is not a readable zip archive: {e}") from e
    with archive:
        infos = archive.infolist()
        if len(infos) > budget.max_images:
            raise UsageError(
                f"{label} has {len(infos)} entries; at most {budget.max_images} are accepted"
            )
        members = [i for i in infos if _is_image_member(i)]
        if not members:
            raise UsageError(
                f"{label} holds no images (expected {', '.join(sorted(UPLOAD_SUFFIXES))} files)"
            )
        _check_sizes(label, members, size, budget)
        for info in members:
            name = safe_name(info.filename)
            try:
                with archive.open(info) as f:
                    blob = f.read(budget.max_image_bytes + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
                raise UsageError(f"{label}: cannot read {info.filename!r}: {e}") from e
            budget.take(f"{label}: {name}", len(blob))  # the headers may have lied
            yield name, blob


def is_archive(filename: str, head: bytes) -> bool:
    """An upload to unpack: named .zip, or starting as a zip does."""
    return filename.lower().endswith(".zip") or head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


# What reading an archive may take beyond its own bytes (its directory, one member at a time).
UNPACK_BYTES = 64 * 2**20


def unpack_task(ctx: TaskContext, filename: str, data: bytes, budget: UploadBudget) -> None:
    """In a decode worker: the images of an archive, each handed back with `ctx.emit`."""
    ctx.need(UNPACK_BYTES + budget.max_image_bytes)
    for item in items_from_upload(filename, data, budget):
        ctx.emit(item)


def safe_name(name: str) -> str:
    """A member or file name with no way out of a folder: no '..', drive, or leading '/'."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    kept = [p for p in parts if p not in ("", ".", "..", "/") and not p.endswith(":")]
    return "/".join(kept)


def _is_image_member(info: zipfile.ZipInfo) -> bool:
    if info.is_dir():
        return False
    parts = safe_name(info.filename).split("/")
    if "__MACOSX" in parts or parts[-1].startswith("."):
        return False
    return PurePosixPath(parts[-1]).suffix.lower() in UPLOAD_SUFFIXES


def _check_sizes(
    label: str, members: list[zipfile.ZipInfo], archive_bytes: int, budget: UploadBudget
) -> None:
    """Refuse from the central directory, before inflating anything: encryption, bombs, and
    what would not fit in the request's budget."""
    for info in members:
        if info.flag_bits & 0x1:
            raise UsageError(f"{label}: {info.filename!r} is encrypted; upload it unencrypted")
        if info.file_size >= RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(
            info.compress_size, 1
        ):
            raise UsageError(
                f"{label}: {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}"
                f" times ({_mb(info.compress_size)} -> {_mb(info.file_size)}): refused as a "
                "zip bomb"
            )
    declared = sum(i.file_size for i in members)
    if declared >= RATIO_MIN_BYTES and declared > MAX_RATIO * archive_bytes:
        raise UsageError(
            f"{label} expands {declared // archive_bytes} times ({_mb(archive_bytes)} -> "
            f"{_mb(declared)}): refused as a zip bomb"
        )
    if budget.total_bytes + declared > budget.max_total_bytes:
        raise UsageError(
            f"{label} unpacks to {_mb(declared)}, more than the {_mb(budget.max_total_bytes)} "
            "a job request may hold"
            + (
                f" ({_mb(budget.total_bytes)} already in this request)"
                if budget.total_bytes
                else ""
            )
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"
