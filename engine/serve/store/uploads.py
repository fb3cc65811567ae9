"""What a job upload may hold: one image, or a .zip of images, unpacked with bounds (member
count, unpacked bytes, compression ratio) so an archive can never exhaust memory or disk."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import PurePosixPath

from engine.errors import UsageError
from engine.runtime.listing import IMAGE_SUFFIXES

MAX_MEMBERS = 10_000
MAX_TOTAL_BYTES = 512 * 2**20
# X-rays barely compress (JPEG, PNG) or compress a few times (BMP, DICOM): a member that
# shrank more than 100x and is over 1 MB unpacked is a decompression bomb, not a scan.
MAX_RATIO = 100
RATIO_MIN_BYTES = 2**20
UPLOAD_SUFFIXES = IMAGE_SUFFIXES


def items_from_upload(
    filename: str,
    data: bytes,
    *,
    max_members: int = MAX_MEMBERS,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> list[tuple[str, bytes]]:
    """An uploaded file as job items: the images of a .zip archive, or the one image.

    Archive members that are folders, macOS metadata or not image files are skipped; names
    keep their folders but lose any '..', drive or leading '/'. Refused with a UsageError:
    an empty upload, a corrupt or encrypted archive, more than `max_members` entries, more
    than `max_total_bytes` unpacked, or a member compressed over MAX_RATIO times (a bomb).
    """
    label = safe_name(filename) or "upload"
    if not data:
        raise UsageError(f"expected an image or a .zip archive, got 0 bytes from {label}")
    if not (filename.lower().endswith(".zip") or data[:4] in (b"PK\x03\x04", b"PK\x05\x06")):
        return [(label, data)]
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise UsageError(f"{label} is not a readable zip archive: {e}") from e
    with archive:
        infos = archive.infolist()
        if len(infos) > max_members:
            raise UsageError(
                f"{label} has {len(infos)} entries; at most {max_members} are accepted"
            )
        members = [i for i in infos if _is_image_member(i)]
        if not members:
            raise UsageError(
                f"{label} holds no images (expected {', '.join(sorted(UPLOAD_SUFFIXES))} files)"
            )
        _check_sizes(label, members, max_total_bytes)
        items, total = [], 0
        for info in members:
            try:
                with archive.open(info) as f:
                    blob = f.read(max_total_bytes - total + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
                raise UsageError(f"{label}: cannot read {info.filename!r}: {e}") from e
            total += len(blob)
            if total > max_total_bytes:  # the headers lied about the sizes
                raise UsageError(f"{label} unpacks to more than {_mb(max_total_bytes)}")
            items.append((safe_name(info.filename), blob))
    return items


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


def _check_sizes(label: str, members: list[zipfile.ZipInfo], max_total_bytes: int) -> None:
    for info in members:
        if info.flag_bits & 0x1:
            raise UsageError(f"{label}: {info.filename!r} is encrypted; upload it unencrypted")
        if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(
            info.compress_size, 1
        ):
            raise UsageError(
                f"{label}: {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}"
                f" times ({_mb(info.compress_size)} -> {_mb(info.file_size)}): refused as a "
                "zip bomb"
            )
    declared = sum(i.file_size for i in members)
    if declared > max_total_bytes:
        raise UsageError(
            f"{label} unpacks to {_mb(declared)}, more than the {_mb(max_total_bytes)} accepted"
        )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"
