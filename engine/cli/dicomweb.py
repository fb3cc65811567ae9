"""The DICOMweb options of `pneumo batch` (`--dicomweb URL` instead of a folder) and the run
they start: a helper of `batch`, not a command of its own."""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK, UsageError

PASSWORD_ENV = "PNEUMO_DICOMWEB_PASSWORD"
TOKEN_ENV = "PNEUMO_DICOMWEB_TOKEN"


def add_dicomweb_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "DICOMweb",
        "Score the frontal chest X-rays of a PACS instead of a folder: search (QIDO-RS), "
        "fetch (WADO-RS), optionally store one Structured Report per image (STOW-RS). "
        f"Password: ${PASSWORD_ENV}; bearer token: ${TOKEN_ENV}.",
    )
    g.add_argument("--dicomweb", default=None, metavar="URL", help="the DICOMweb root URL")
    g.add_argument(
        "--study",
        action="append",
        default=[],
        metavar="UID",
        help="only this StudyInstanceUID (repeatable; default: every study)",
    )
    g.add_argument(
        "--since", type=study_date, default=None, metavar="DATE", help="StudyDate on or after"
    )
    g.add_argument(
        "--any-view",
        action="store_true",
        help="score every instance, not only CR/DX CHEST PA/AP (the model's training views)",
    )
    g.add_argument(
        "--store-sr",
        action="store_true",
        help="store one DICOM SR per scored image into its study, in a new series",
    )
    g.add_argument(
        "--dicomweb-user",
        default=None,
        metavar="USER",
        help=f"basic auth (password: ${PASSWORD_ENV})",
    )
    g.add_argument("--dicomweb-ca", default=None, metavar="CA.pem", help="trust this CA for https")


def check_folder_or_dicomweb(args: argparse.Namespace) -> None:
    """Exactly one source: a folder, or --dicomweb; the DICOMweb options only with the latter."""
    if args.dicomweb is None:
        if args.folder is None:
            raise UsageError("name a folder to score, or a server: --dicomweb URL")
        used = [
            flag
            for flag, value in (
                ("--study", args.study),
                ("--since", args.since),
                ("--any-view", args.any_view),
                ("--store-sr", args.store_sr),
                ("--dicomweb-user", args.dicomweb_user),
                ("--dicomweb-ca", args.dicomweb_ca),
            )
            if value
        ]
        if used:
            raise UsageError(f"{', '.join(used)} only work with --dicomweb URL")
        return
    if args.folder is not None:
        raise UsageError(f"score a folder ({args.folder}) or --dicomweb, not both")
    if args.ray is not None or args.report is not None or args.recursive:
        raise UsageError("--ray, --report and --recursive work on folders, not with --dicomweb")


def run_dicomweb(args: argparse.Namespace) -> int:
    from pneumo_onnx.engine.cli.options import load_engine
    from pneumo_onnx.engine.offline.dicomweb.client import Client
    from pneumo_onnx.engine.offline.dicomweb.run import Options
    from pneumo_onnx.engine.offline.dicomweb.run import run_dicomweb as run
    from pneumo_onnx.engine.runtime.engine import check_batch_options, decode_workers
    from pneumo_onnx.engine.runtime.isolated import decode_sandbox

    check_batch_options(args.batch_size, args.workers)
    options = Options(
        studies=args.study,
        since=args.since,
        any_view=args.any_view,
        store_sr=args.store_sr,
        threshold=args.threshold,
        batch_size=args.batch_size,
    )
    if args.store_sr:
        from pneumo_onnx.engine.explain.sr import require_highdicom

        require_highdicom()
    with (
        Client(
            args.dicomweb,
            user=args.dicomweb_user,
            password=os.environ.get(PASSWORD_ENV) or None,
            token=os.environ.get(TOKEN_ENV) or None,
            ca_file=args.dicomweb_ca,
        ) as client,
        decode_sandbox(decode_workers(args.workers), fork=True) as sandbox,
    ):
        engine = load_engine(args)
        summary = run(
            engine, client, Path(args.output), options, args.resume, args.overwrite, sandbox
        )
    counts = ", ".join(f"{label} {n}" for label, n in sorted(summary.counts.items())) or "none"
    stored = f"; {summary.reports} SRs stored" if args.store_sr else ""
    print(
        f"found {summary.found} instances at {client.url}: scored "
        f"{summary.total - len(summary.errors)} in {summary.seconds:.1f} s: {counts}; "
        f"{len(summary.errors)} errors; {summary.not_scored} not frontal chest X-rays "
        "(see the skipped column); "
        f"{summary.skipped} skipped (already in {args.output}){stored}"
    )
    for sop, message in summary.errors:
        print(f"  unreadable: {sop}: {message}")
    return EXIT_FAILED if summary.errors else EXIT_OK


def study_date(text: str) -> str:
    """A date as QIDO-RS matches it (YYYYMMDD), from YYYY-MM-DD or YYYYMMDD."""
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(text, pattern).strftime("%Y%m%d")
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"expected a date like 2024-01-31, got {text!r}")
