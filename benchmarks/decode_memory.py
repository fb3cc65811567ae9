"""The memory one image's decode and preprocessing really takes, per pixel, by Pillow mode and
format: the smallest RLIMIT_DATA allowance above a decode worker's resting size under which
it succeeds (bisection, a fresh process per trial). `engine.runtime.limits` budgets from
these figures (with a margin); this shows where they come from.

    .venv/bin/python -m benchmarks.decode_memory [--side 4000] [--paths fast,reference]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

CASES = [  # (mode, format, fill)
    ("L", "PNG", "128"),
    ("L", "JPEG", "128"),
    ("RGB", "PNG", "(90, 100, 110)"),
    ("RGB", "JPEG", "(90, 100, 110)"),
    ("RGBA", "PNG", "(1, 2, 3, 200)"),
    ("LA", "PNG", "(100, 200)"),
    ("P", "PNG", "7"),
    ("I;16", "PNG", "1000"),
    ("I", "TIFF", "70000"),
    ("F", "TIFF", "0.5"),
    ("CMYK", "JPEG", "(1, 2, 3, 4)"),
    ("I;16", "DICOM", "1000"),  # uncompressed 16-bit
    ("I;16", "DICOM-RLE", "0"),
    ("L", "DICOM-J2K", "0"),  # 8-bit JPEG 2000
    ("L", "DICOM-JPEG", "100"),  # 8-bit baseline JPEG
]

TRIAL = textwrap.dedent(
    """
    import io, resource, sys
    from PIL import Image
    from pneumo_onnx.engine.contract import Contract
    from pneumo_onnx.engine.errors import ImageError
    from pneumo_onnx.engine.runtime.decoders import inspect
    from pneumo_onnx.engine.runtime.preprocess import RESIZERS
    from pneumo_onnx.engine.runtime.sandbox.wire import data_bytes
    mode, fmt, fill, side, path, allowance = sys.argv[1:7]
    if fmt == "DICOM":
        import numpy as np
        from benchmarks.payloads import make_dicom
        data = make_dicom(np.full((int(side), int(side)), eval(fill), np.uint16))
    elif fmt == "DICOM-RLE":
        from benchmarks.payloads import rle_dicom
        data = rle_dicom(int(side))
    elif fmt in ("DICOM-J2K", "DICOM-JPEG"):
        from benchmarks.payloads import encapsulated_dicom
        data = encapsulated_dicom(int(side), fmt[6:])
    else:
        buf = io.BytesIO()
        Image.new(mode, (int(side), int(side)), eval(fill)).save(buf, fmt)
        data = buf.getvalue()
    contract = Contract()  # 128 x 128 RGB, bicubic: the shipped model's pipeline
    limit = data_bytes() + int(allowance) * 2**20
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
    try:
        RESIZERS[path](inspect(data, "x"), contract)
    except (MemoryError, ImageError):  # codecs may report a failed allocation as bad data
        sys.exit(3)
    """
)


def succeeds(mode: str, fmt: str, fill: str, side: int, path: str, allowance_mb: int) -> bool:
    args = [mode, fmt, fill, str(side), path, str(allowance_mb)]
    env = {"OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1", "PATH": "/usr/bin:/bin"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", TRIAL, *args], env=env, capture_output=True)
    if done.returncode not in (0, 3):
        raise RuntimeError(done.stderr.decode()[-2000:])
    return done.returncode == 0


def smallest(mode: str, fmt: str, fill: str, side: int, path: str) -> int:
    if not succeeds(mode, fmt, fill, side, path, 8192):
        raise RuntimeError(f"{mode} {fmt}: does not decode even under 8 GB")
    low, high = 0, 64
    while not succeeds(mode, fmt, fill, side, path, high):
        low, high = high, high * 2
        if high > 8192:
            raise RuntimeError(f"{mode} {fmt}: no decode under 8 GB")
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (
            (low, middle) if succeeds(mode, fmt, fill, side, path, middle) else (middle, high)
        )
    return high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4000, help="square images of side^2 px")
    parser.add_argument("--paths", default="fast,reference")
    parser.add_argument("--formats", default=None, help="only these formats (comma-separated)")
    args = parser.parse_args()
    pixels = args.side**2
    print(
        f"{'mode':6} {'format':6} {'path':10} {'MB':>6} {'bytes/px':>9}   ({pixels / 1e6:.0f} Mpx)"
    )
    wanted = set(args.formats.split(",")) if args.formats else None
    for mode, fmt, fill in CASES:
        if wanted is not None and fmt not in wanted:
            continue
        for path in args.paths.split(","):
            mb = smallest(mode, fmt, fill, args.side, path)
            print(f"{mode:6} {fmt:6} {path:10} {mb:6d} {mb * 2**20 / pixels:9.2f}", flush=True)


if __name__ == "__main__":
    main()
