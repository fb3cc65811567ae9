"""`pneumo serve`: its options and what it runs. FastAPI and uvicorn load inside the handler,
so `pneumo --help` stays light."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pneumo_onnx.engine.cli.options import (
    Subparsers,
    add_device_option,
    add_preprocessing_option,
    add_variant_option,
    command,
)
from pneumo_onnx.engine.errors import EXIT_OK, UsageError


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "serve",
        help="REST server: seed routes, KServe V2, jobs, monitoring (needs the 'serve' extra)",
        description="Serve a model repository over HTTP with dynamic batching. API keys come "
        "from PNEUMO_API_KEYS (comma-separated) and/or --api-key-file; admin keys (repository "
        "control) from PNEUMO_ADMIN_KEYS and/or --admin-key-file.",
    )
    p.add_argument("--model-repo", type=Path, default=None, help="default: the shipped models")
    p.add_argument("--model", default=None, help="model name in the repository (default: first)")
    add_variant_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="port to listen on; unset: $SAGEMAKER_BIND_TO_PORT, else $AIP_HTTP_PORT, "
        "else 8000 (default: 8000)",
    )
    add_device_option(p)
    add_preprocessing_option(p)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    p.add_argument("--ssl-certfile", type=Path, default=None, help="TLS certificate (PEM)")
    p.add_argument("--ssl-keyfile", type=Path, default=None, help="TLS private key (PEM)")
    p.add_argument("--max-batch", type=int, default=32, help="dynamic batch size")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="batch wait")
    p.add_argument("--max-queue", type=int, default=256, help="queued images before 503")
    p.add_argument(
        "--decode-workers",
        "--decode-threads",  # its name before decoding moved to worker processes
        dest="decode_workers",
        type=int,
        default=2,
        help="processes that decode images and parse large bodies, each memory-capped",
    )
    p.add_argument(
        "--decode-memory-mb",
        type=float,
        default=512.0,
        help="memory the decodes of all decode workers may hold at once",
    )
    p.add_argument(
        "--decode-timeout",
        type=float,
        default=10.0,
        help="seconds an image's header, or its decode, may take (beyond: killed, 400)",
    )
    p.add_argument(
        "--max-queue-delay",
        type=float,
        default=2.0,
        help="seconds images may wait for a decoder before new requests get 503",
    )
    p.add_argument("--cache-size", type=int, default=1024, help="cached results (0: off)")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="request size limit")
    p.add_argument(
        "--max-request-mpx", type=float, default=200.0, help="decoded Mpx of images per request"
    )
    p.add_argument(
        "--max-decode-mpx",
        type=float,
        default=400.0,
        help="decoded Mpx admitted and waiting to be decoded, all requests (beyond: 503)",
    )
    p.add_argument(
        "--max-inflight-mb",
        type=float,
        default=256.0,
        help="request bodies being received or handled at once (beyond: 503)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections (idle ones are closed to make room; beyond: 503)",
    )
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=64,
        help="open connections from one address, trusted proxies excepted (0: no limit)",
    )
    p.add_argument(
        "--header-timeout", type=float, default=10.0, help="seconds request headers may take"
    )
    p.add_argument(
        "--body-timeout", type=float, default=60.0, help="seconds a request body may take"
    )
    p.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="proxies whose X-Forwarded-For is believed (default: none)",
    )
    p.add_argument("--api-key-file", type=Path, default=None, help="one API key per line")
    p.add_argument(
        "--admin-key-file", type=Path, default=None, help="one admin key per line (repository)"
    )
    p.add_argument("--protect-health", action="store_true", help="health routes need a key")
    p.add_argument("--protect-metrics", action="store_true", help="/metrics needs a key")
    p.add_argument("--rate-limit", type=float, default=0.0, help="requests/s per client (0: off)")
    p.add_argument("--rate-burst", type=int, default=20, help="requests a client may burst")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("pneumo-state"),
        help="prediction log and job database folder",
    )
    p.add_argument("--log-images", action="store_true", help="also store images in the log")
    p.add_argument(
        "--log-retention-days",
        type=float,
        default=90.0,
        help="delete logged predictions older than this (0: keep all)",
    )
    p.add_argument(
        "--job-ttl",
        type=float,
        default=168.0,
        help="hours a finished or failed job is kept (0: until deleted)",
    )
    p.add_argument(
        "--max-job-mb", type=float, default=256.0, help="unpacked images of one job request"
    )
    p.add_argument(
        "--job-store-mb",
        type=float,
        default=2048.0,
        help="images of all unfinished jobs together (beyond: 503)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pneumo_onnx.engine.serve import server
    from pneumo_onnx.engine.serve.config import ServeConfig
    from pneumo_onnx.engine.serve.front.security import ADMIN_KEY_ENV, load_api_keys
    from pneumo_onnx.engine.serve.logs import configure

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
        preprocessing=args.preprocessing,
        threads=args.threads,
        max_batch=args.max_batch,
        max_delay_ms=args.max_delay_ms,
        max_queue=args.max_queue,
        decode_workers=args.decode_workers,
        decode_memory_mb=args.decode_memory_mb,
        decode_timeout_s=args.decode_timeout,
        max_queue_delay_s=args.max_queue_delay,
        cache_size=args.cache_size,
        max_upload_mb=args.max_upload_mb,
        max_request_mpx=args.max_request_mpx,
        max_decode_mpx=args.max_decode_mpx,
        max_inflight_mb=args.max_inflight_mb,
        body_timeout_s=args.body_timeout,
        api_keys=tuple(load_api_keys(args.api_key_file)),
        admin_keys=tuple(load_api_keys(args.admin_key_file, variable=ADMIN_KEY_ENV)),
        open_health=not args.protect_health,
        open_metrics=not args.protect_metrics,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        state_dir=args.state_dir,
        log_images=args.log_images,
        log_retention_days=args.log_retention_days,
        job_ttl_hours=args.job_ttl,
        max_job_mb=args.max_job_mb,
        job_store_mb=args.job_store_mb,
    )
    if args.model_repo is not None and not args.model_repo.is_dir():
        raise UsageError(f"{args.model_repo}: no such model repository folder")
    server.run(
        config,
        args.host,
        args.port if args.port is not None else server.platform_port(),
        args.workers,
        args.ssl_certfile,
        args.ssl_keyfile,
        max_connections=args.max_connections,
        forwarded_allow_ips=args.forwarded_allow_ips,
        header_timeout=args.header_timeout,
        max_connections_per_client=args.max_connections_per_client,
    )
    return EXIT_OK
