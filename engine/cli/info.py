"""`pneumo info`: what a model is (contract, variants, provenance) and what can run it."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from pneumo_onnx import __version__
from pneumo_onnx.engine.cli.options import (
    STDIO,
    Subparsers,
    add_json_option,
    add_variant_option,
    command,
    json_target,
    load_engine,
    write_json,
)
from pneumo_onnx.engine.errors import EXIT_OK
from pneumo_onnx.engine.repository.sections import Parity, Source


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "info",
        help="model contract, variants, providers, versions",
        description="Show a model's input contract, output meaning, variants, provenance and "
        "parity figures, and the execution providers this onnxruntime offers.",
    )
    p.add_argument("model", nargs="?", default=None, help="model file or folder (default: shipped)")
    add_variant_option(p)
    add_json_option(p, "everything shown")
    p.set_defaults(handler=run, device="cpu", preprocessing="auto", threads=None)


def run(args: argparse.Namespace) -> int:
    import numpy
    import onnxruntime
    import PIL

    target = json_target(args)
    engine = load_engine(args)
    info = {
        **engine.info(),
        "providers_available": onnxruntime.get_available_providers(),
        "versions": {
            "pneumo-onnx": __version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__,
            "pillow": PIL.__version__,
            "python": platform.python_version(),
        },
    }
    if target == STDIO:
        write_json(target, info)
        return EXIT_OK
    manifest = engine.model.manifest
    c = info["contract"]
    i, o = c["input"], c["output"]
    lines = [
        f"model:        {info['model']}",
        f"name:         {info['name'] or '-'}  version {info['version'] or '-'}  "
        f"variant {info['variant']}  (available: {', '.join(info['variants']) or '-'})",
        f"input:        {i['name']} {i['layout']} {i['height']}x{i['width']}x{i['channels']}",
        f"pipeline:     {engine.contract.input.describe()}",
        f"preprocess:   {info['preprocessing']}: {info['preprocessing_reason']}",
        f"output:       {o['name']} {o['kind']} -> P({c['positive_label']}); "
        f"labels {c['negative_label']}/{c['positive_label']}; threshold {c['threshold']} "
        f"({THRESHOLD_SOURCES[info['threshold_source']]})",
        f"source:       {_source_line(manifest.source if manifest else None)}",
        f"parity:       {_parity_line(manifest.parity if manifest else None)}",
        *_fp32_line(info["fp32_layers"]),
        f"provider:     {info['provider']} (available: {', '.join(info['providers_available'])})",
        "versions:     " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
    ]
    print("\n".join(lines))
    if target is not None:
        write_json(target, info)
    return EXIT_OK


THRESHOLD_SOURCES = {
    "stated": "stated at conversion",
    "default": "the contract's default",
    None: "its source not recorded",
}


def _fp32_line(layers: dict[str, Any] | None) -> list[str]:
    if not layers or not layers["nodes"]:
        return []
    return [
        f"fp32 layers:  {len(layers['nodes'])} node(s) kept in fp32, "
        f"{layers['mac_share']:.0%} of the multiply-adds"
    ]


def _source_line(source: Source | None) -> str:
    if source is None:
        return "- (plain ONNX file: no provenance)"
    return f"{source.name} ({source.format}, sha256 {source.sha256[:12]}...)"


def _parity_line(parity: Parity | None) -> str:
    if parity is None:
        return "- (not recorded)"
    line = f"max abs diff {parity.max_abs_diff:.2e} vs the source on {parity.probes} probes"
    noise = max(parity.fp32_noise.values(), default=None) if parity.fp32_noise else None
    line += f" (tolerance {parity.tolerance:.1e}"
    return line + (f", from its fp32 noise {noise:.1e})" if noise is not None else ")")
