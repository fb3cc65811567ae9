"""A run's results for people: Markdown tables (one per suite) and a PNG chart (throughput
bars, latency percentiles). The JSON stays the source; both are derived from it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], Any]]


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value else ""


def _tree(row: Row, single: str, tree: str) -> str:
    """A process's peak RSS, and its tree's where it differs (decode workers)."""
    one, all_ = row.get(single, ""), row.get(tree)
    return f"{one} ({all_})" if all_ is not None and all_ != one else str(one)


def _lat(row: Row) -> str:
    lat = row.get("latency_ms")
    return f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f}" if lat else ""


def _p50_p99(row: Row) -> str:
    lat = row.get("latency_ms")
    return f"{lat['p50']:.0f} / {lat['p99']:.0f}" if lat else ""


def _answers(a: dict[str, Any]) -> str:
    """max |diff| and labels agreeing, FLAGGED with why when they do not match."""
    if not a.get("images"):
        return f"**FLAGGED**: {a.get('why', 'not checked')}"
    text = f"max {a['max_abs_diff']:.4f}, labels {a['labels_agree']}/{a['images']}"
    return f"{text}, **FLAGGED**: {a['why']}" if a["flagged"] else text


def peer_ratios(result: dict[str, Any]) -> list[str]:
    """pneumo against the best peer at each concurrency, on each route."""
    lines = ["", "pneumo vs the best peer (most requests/s, no errors, answers not flagged):", ""]
    rows = [
        [
            r["route"],
            r["concurrency"],
            r["best_peer"],
            _x(r["requests_per_second_ratio"]),
            f"{r['p99_ms']:.0f} vs {r['best_peer_p99_ms']:.0f}",
            "yes" if r["meets_goal"] else "**no**",
        ]
        for r in result.get("ratios", [])
    ]
    header = ["pneumo route", "clients", "best peer", "requests/s ratio", "p99 ms (pneumo vs peer)"]
    return lines + table([*header, ">= 1.5x, lower p99"], rows)


COLUMNS: dict[str, list[Column]] = {
    "pipeline": [
        ("images/s (warm)", lambda r: r.get("images_per_second", "")),
        ("x baseline", lambda r: _x(r.get("ratio_to_baseline"))),
        ("x keras-loop", lambda r: _x(r.get("ratio_to_keras_loop"))),
        ("latency p50/p95/p99 ms", _lat),
        ("latency of", lambda r: r.get("latency_unit", "")),
        ("cold s", lambda r: r.get("cold_seconds", "")),
        ("cold x baseline", lambda r: _x(r.get("cold_ratio_to_baseline"))),
        ("cold x keras-loop", lambda r: _x(r.get("cold_ratio_to_keras_loop"))),
        ("cold x before", lambda r: _x(r.get("ratio_to_before"))),
        ("peak RSS MB (tree)", lambda r: _tree(r, "peak_rss_mb", "peak_tree_rss_mb")),
    ],
    "serve": [
        ("requests/s", lambda r: r["requests_per_second"]),
        ("x baseline", lambda r: _x(r.get("ratio_to_baseline"))),
        ("latency p50/p95/p99 ms", _lat),
        ("x before", lambda r: _x(r.get("ratio_to_before"))),
        ("errors", lambda r: f"{r['errors']} of {r['requests']}"),
        ("server + workers peak RSS MB", lambda r: r.get("server_peak_rss_mb", "")),
        ("server CPU ms/request", lambda r: r.get("server_cpu_ms_per_request", "")),
        ("ready s", lambda r: r.get("ready_seconds", "")),
    ],
    "limits": [
        ("server", lambda r: r.get("server", "pneumo")),
        ("status", lambda r: r["status"]),
        ("s", lambda r: r.get("seconds", "")),
        ("server peak RSS MB", lambda r: r["peak_rss_mb"]),
        ("server + workers peak RSS MB", lambda r: r.get("peak_tree_rss_mb", "")),
    ],
    "startup": [
        ("start to first prediction, median s", lambda r: r["seconds_median"]),
        ("min s", lambda r: r["seconds_min"]),
        ("x baseline", lambda r: _x(r.get("ratio_to_baseline"))),
        ("peak RSS MB", lambda r: r["peak_rss_mb"]),
    ],
    "conversion": [
        ("batch", lambda r: r["batch"]),
        ("images/s median", lambda r: r["images_per_second"]),
        ("x fp32 (median)", lambda r: _x(r.get("ratio_to_baseline"))),
        ("x fp32 (best)", lambda r: _x(r.get("ratio_to_baseline_best"))),
    ],
    "peers": [
        ("clients", lambda r: r["concurrency"]),
        ("route", lambda r: r["route"]),
        ("requests/s", lambda r: r["requests_per_second"]),
        ("p50 / p99 ms", lambda r: _p50_p99(r)),
        ("errors", lambda r: f"{r['errors']} of {r['requests']}"),
        ("tree peak RSS MB", lambda r: r.get("peak_tree_rss_mb", "")),
        ("server CPU ms/request", lambda r: r.get("server_cpu_ms_per_request", "")),
        ("answers vs Engine.predict", lambda r: _answers(r.get("answers") or {})),
    ],
    "ray": [
        ("whole process s (median)", lambda r: r["cold_seconds"]),
        ("images/s", lambda r: r["cold_images_per_second"]),
        ("x baseline", lambda r: _x(r.get("ratio_to_baseline"))),
        ("peak RSS MB", lambda r: r["peak_rss_mb"]),
    ],
}


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def model_tables(result: dict[str, Any]) -> list[str]:
    """Two pivots: images/s (and ratio to the baseline) and per-call p50 latency, by batch."""
    batches = sorted({r["batch"] for r in result["rows"]})
    names = list(dict.fromkeys(r["name"] for r in result["rows"]))
    cell = {(r["name"], r["batch"]): r for r in result["rows"]}
    ips, lat = [], []
    for name in names:
        rs = [cell.get((name, b)) for b in batches]
        ips.append(
            [name]
            + [
                f"{r['images_per_second']} ({_x(r['ratio_to_baseline'])})"
                if r and r.get("ratio_to_baseline")
                else (r["images_per_second"] if r else "")
                for r in rs
            ]
        )
        lat.append([name] + [f"{r['latency_ms']['p50']:.2f}" if r else "" for r in rs])
    lines = ["images/s, median of the repeats (ratio to the baseline at the same batch):", ""]
    lines += table(["row"] + [f"batch {b}" for b in batches], ips)
    lines += ["", "per-call latency, p50 ms:", ""]
    lines += table(["row"] + [f"batch {b}" for b in batches], lat)
    v1 = result.get("default_over_v1_fp32") or {}
    if v1.get("ratio"):
        lines += [
            "",
            f"Default model v2 over v1, onnxruntime fp32, batch {v1['batch']}: "
            f"**{_x(v1['ratio'])}** images/s (same inputs, same run).",
        ]
    peak = result.get("peak", {})
    if "achieved_gflops_median" in peak:
        lines += [
            "",
            f"onnxruntime fp32, batch 32: {peak['model']['gflops_per_image']} GFLOP/image "
            f"({peak['model']['counted']}) -> **{peak['achieved_gflops_median']} GFLOP/s** "
            f"(best {peak['achieved_gflops_best']}), **{peak.get('percent_of_theoretical_peak')}%"
            f"** of the theoretical peak {peak['theoretical_peak']['gflops']} GFLOP/s "
            f"({peak['theoretical_peak']['cores']} cores x "
            f"{peak['theoretical_peak']['flop_per_cycle_per_core']} FLOP/cycle x "
            f"{peak['theoretical_peak']['ghz']} GHz; {peak['theoretical_peak']['assumption']}), "
            f"**{peak['percent_of_measured_peak']}%** of the measured peak "
            f"{peak['measured_peak']['gflops']} GFLOP/s ({peak['measured_peak']['method']}; "
            f"implies >= {peak['measured_peak']['implied_clock_ghz']} GHz under load).",
        ]
    return lines


def suite_markdown(name: str, result: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if result["status"] != "ok":
        return [*lines, f"**{result['status']}**: {result['reason']}", ""]
    if result.get("baseline"):
        lines += [f"Baseline: `{result['baseline']}`. {result['seconds']:.0f} s.", ""]
    if name == "model":
        lines += model_tables(result)
    elif result["rows"]:
        cols = COLUMNS[name]
        lines += table(
            ["row"] + [c[0] for c in cols],
            [[r["name"]] + [f(r) for _, f in cols] for r in result["rows"]],
        )
    if name == "peers":
        lines += peer_ratios(result)
    extra = {
        "pipeline": result.get("fast_vs_reference"),
        "startup": result.get("installed_size"),
        "conversion": result.get("conversion"),
    }.get(name)
    if extra:
        lines += ["", f"```\n{_compact(extra)}\n```"]
    for s in result.get("skipped", []):
        lines += ["", f"- skipped `{s['name']}`: {s['reason']}"]
    return [*lines, ""]


def _compact(d: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {v}" for k, v in d.items())


def markdown(run: dict[str, Any]) -> str:
    m, cpu = run["machine"], run["machine"]["cpu"]
    gpu = m.get("gpu") or {}
    lines = [
        f"## Benchmark run {run['started']} ({run['label']})",
        "",
        f"Command: `{run['command']}`",
        "",
        f"Machine: {cpu['model']}, {cpu['physical_cores']} cores, {cpu.get('mhz')} MHz, "
        f"flags {'/'.join(cpu['flags'])}; GPU: {gpu.get('name', 'none')}"
        + (f", driver {gpu['driver']}" if gpu.get("driver") else "")
        + f". Threads: {run['settings']['threads']}, device {run['settings']['device']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()) + ".",
        "",
        f"Model `{run['model']['dir']}`, sha256: "
        + ", ".join(f"{k} {v[:16]}..." for k, v in run["model"]["sha256"].items())
        + ".",
        f"Images: {run['images']['count']} from `{run['images']['folder']}`.",
        "",
    ]
    for name, result in run["suites"].items():
        lines += suite_markdown(name, result)
    return "\n".join(lines)


def chart(run: dict[str, Any], path: Path) -> str:
    """Write the PNG; returns the path, or why no chart was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib not installed (pip install 'pneumo-onnx[dev]')"
    panels = _panels(run)
    if not panels:
        return "skipped: no suite produced rows to draw"
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(8 * cols, 4.2 * rows), squeeze=False)
    for ax, (title, xlabel, labels, series) in zip(axes.flat, panels, strict=False):
        _bars(ax, title, xlabel, labels, series)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    cpu = run["machine"]["cpu"]
    fig.suptitle(
        f"pneumo-onnx benchmarks, {run['label']}: {cpu['model']} x{cpu['physical_cores']}, "
        f"{run['images']['count']} images, {run['started'][:16]}",
        fontsize=12,
    )
    notes = [
        f"{suite}/{s['name']}: {s['reason'][:150]}"
        for suite, result in run["suites"].items()
        for s in result.get("skipped", [])
    ] + [
        f"{suite}: {result['status']}: {result['reason'][:150]}"
        for suite, result in run["suites"].items()
        if result["status"] != "ok"
    ]
    bottom = 0.014 * (len(notes) + 2) if notes else 0
    if notes:
        fig.text(0.01, 0.005, "not shown:\n" + "\n".join(notes), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


Series = list[tuple[str, list[float | None]]]


def _by_name(
    rows: list[dict[str, Any]], column: str, value: str, label: str
) -> tuple[list[str], Series]:
    """Rows as bars by name, one series per value of `column` (`label` names it)."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    cell = {(r["name"], r[column]): r[value] for r in rows}
    levels = sorted({r[column] for r in rows})
    return names, [(label.format(v), [cell.get((n, v)) for n in names]) for v in levels]


def _panels(run: dict[str, Any]) -> list[tuple[str, str, list[str], Series]]:
    suites = {k: v for k, v in run["suites"].items() if v["status"] == "ok" and v.get("rows")}
    out = []
    if "model" in suites:
        rows = suites["model"]["rows"]
        names, series = _by_name(rows, "batch", "images_per_second", "batch {}")
        out.append(("model only: throughput (higher is better)", "images/s", names, series))
    if "pipeline" in suites:
        rows = suites["pipeline"]["rows"]
        names = [r["name"] for r in rows]
        cold = [r["images"] / r["cold_seconds"] if r.get("cold_seconds") else None for r in rows]
        series = [
            ("warm", [r.get("images_per_second") for r in rows]),
            ("cold (start-up incl.)", cold),
        ]
        out.append(("folder of X-rays, end to end (higher is better)", "images/s", names, series))
        lat = [r for r in rows if r.get("latency_ms") and r.get("latency_unit") == "one image"]
        out.append(_percentiles("latency per image (single-image calls)", lat))
    if "serve" in suites:
        rows = suites["serve"]["rows"]
        out.append(
            (
                f"HTTP, {suites['serve']['concurrency']} concurrent clients (higher is better)",
                "requests/s",
                [r["name"] for r in rows],
                [("requests/s", [r["requests_per_second"] for r in rows])],
            )
        )
        out.append(_percentiles("HTTP latency", [r for r in rows if r.get("latency_ms")]))
    if "peers" in suites:
        rows = suites["peers"]["rows"]
        names, series = _by_name(rows, "concurrency", "requests_per_second", "{} clients")
        out.append(("same model, other servers (higher is better)", "requests/s", names, series))
    if "startup" in suites:
        rows = suites["startup"]["rows"]
        out.append(
            (
                "cold start to first prediction (lower is better)",
                "seconds (median)",
                [r["name"] for r in rows],
                [("seconds", [r["seconds_median"] for r in rows])],
            )
        )
    return out


def _percentiles(title: str, rows: list[Row]) -> tuple[str, str, list[str], Series]:
    names = [r["name"] for r in rows]
    series = [(p, [r["latency_ms"][p] for r in rows]) for p in ("p50", "p95", "p99")]
    return f"{title} (lower is better)", "latency, ms", names, series


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def _bars(ax: Any, title: str, xlabel: str, labels: list[str], series: Series) -> None:
    """Horizontal grouped bars, each labelled with its value; log scale only when the values
    span more than 20x, with plain-number ticks either way."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    n = len(series)
    height = min(0.8 / n, 0.45)
    values = [v for _, vs in series for v in vs if v]
    for i, (name, vs) in enumerate(series):
        ys = [j + (i - (n - 1) / 2) * height for j in range(len(labels))]
        bars = ax.barh(ys, [v or 0 for v in vs], height=height, label=name)
        for bar, v in zip(bars, vs, strict=True):
            if v:
                y = bar.get_y() + bar.get_height() / 2
                ax.text(bar.get_width(), y, " " + _fmt(v), va="center", fontsize=7)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.invert_yaxis()
    if values and max(values) / min(values) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(min(values) / 1.5, max(values) * 3)
    else:
        ax.set_xlim(0, max(values or [1]) * 1.18)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", which="major", alpha=0.3)
    if n > 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
