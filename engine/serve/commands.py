"""`pneumo serve` and `pneumo monitor`: their options and what they run. Imported by the CLI at
start-up, so it stays light: FastAPI, uvicorn and SQLite reports load inside the handlers."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from engine.errors import EXIT_FAILED, EXIT_OK, UsageError
from engine.repository import VARIANT_FILES


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="REST server: seed routes, KServe V2, jobs, monitoring (needs the 'serve' extra)",
        description="Serve a model repository over HTTP with dynamic batching. API keys come "
        "from PNEUMO_API_KEYS (comma-separated) and/or --api-key-file.",
    )
    p.add_argument("--model-repo", type=Path, default=None, help="default: the shipped models")
    p.add_argument("--model", default=None, help="model name in the repository (default: first)")
    p.add_argument("--variant", default=None, choices=tuple(VARIANT_FILES))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--ssl-certfile", type=Path, default=None)
    p.add_argument("--ssl-keyfile", type=Path, default=None)
    p.add_argument("--max-batch", type=int, default=32, help="dynamic batch size (default 32)")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="batch wait (default 5)")
    p.add_argument("--max-queue", type=int, default=256, help="queued images before 503")
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--cache-size", type=int, default=1024, help="cached results (0: off)")
    p.add_argument("--max-upload-mb", type=float, default=16.0)
    p.add_argument("--api-key-file", type=Path, default=None, help="one API key per line")
    p.add_argument("--protect-health", action="store_true", help="health routes need a key")
    p.add_argument("--protect-metrics", action="store_true", help="/metrics needs a key")
    p.add_argument("--rate-limit", type=float, default=0.0, help="requests/s per client (0: off)")
    p.add_argument("--rate-burst", type=int, default=20)
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("pneumo-state"),
        help="prediction log and job database folder (default ./pneumo-state)",
    )
    p.add_argument("--log-images", action="store_true", help="also store images in the log")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from engine.serve.config import ServeConfig
    from engine.serve.logs import configure
    from engine.serve.security import load_api_keys
    from engine.serve.server import run

    # A server logs structured JSON lines (access log with request ids included) at INFO.
    for handler in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(handler)
    configure("INFO")
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # per-part parser chatter

    config = ServeConfig(
        model_repo=args.model_repo,
        model=args.model,
        device=args.device,
        variant=args.variant,
        threads=args.threads,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        decode_threads=args.decode_threads,
        cache_size=args.cache_size,
        max_upload_mb=args.max_upload_mb,
        api_keys=tuple(load_api_keys(args.api_key_file)),
        open_health=not args.protect_health,
        open_metrics=not args.protect_metrics,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        state_dir=args.state_dir,
        log_images=args.log_images,
    )
    if args.model_repo is not None and not args.model_repo.is_dir():
        raise UsageError(f"{args.model_repo.name}: no such model repository folder")
    run(config, args.host, args.port, args.workers, args.ssl_certfile, args.ssl_keyfile)
    return EXIT_OK


def add_monitor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "monitor",
        help="read a `pneumo serve` prediction log: summary, drift",
        description="Reports on the SQLite prediction log written by `pneumo serve`.",
    )
    msub = p.add_subparsers(dest="monitor_command", metavar="REPORT", required=True)
    s = msub.add_parser(
        "summary",
        help="counts, class rates, score distribution, latency percentiles",
        description="What the prediction log holds for the last N hours.",
    )
    s.add_argument("--db", required=True, metavar="PATH", help="the prediction log (SQLite)")
    s.add_argument("--hours", type=_positive_float, default=24.0, help="window (default 24)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=run_monitor)
    d = msub.add_parser(
        "drift",
        help="recent predictions vs a reference window: class rates and score PSI",
        description="Compare the last --recent-hours with the time before it, back to "
        "--reference-hours ago: class-rate change and the population stability index (PSI) of "
        "the scores. Exit 1 when the drift is significant (PSI > 0.25 or a class rate moved "
        "by more than 0.1).",
    )
    d.add_argument("--db", required=True, metavar="PATH", help="the prediction log (SQLite)")
    d.add_argument("--recent-hours", type=_positive_float, default=24.0)
    d.add_argument("--reference-hours", type=_positive_float, default=168.0)
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(handler=run_monitor)


def run_monitor(args: argparse.Namespace) -> int:
    from engine.serve import reports

    if args.monitor_command == "summary":
        report = reports.summarize(args.db, hours=args.hours)
        lines = reports.summary_lines(report)
        code = EXIT_OK
    else:
        report = reports.drift_report(
            args.db, recent_hours=args.recent_hours, reference_hours=args.reference_hours
        )
        lines = reports.drift_lines(report)
        code = EXIT_FAILED if report["drift_detected"] else EXIT_OK
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return code


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0.0 < value < float("inf"):  # also rejects NaN
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value
