"""`pneumo monitor summary|drift`: reports on the prediction log `pneumo serve` writes, as
text for people or JSON for scripts. The figures come from `engine.serve.store.reports`."""

from __future__ import annotations

import argparse
from typing import Any

from pneumo_onnx.engine.cli.options import (
    STDIO,
    Subparsers,
    add_json_option,
    command,
    json_target,
    positive_float,
    write_json,
)
from pneumo_onnx.engine.errors import EXIT_FAILED, EXIT_OK


def add(sub: Subparsers) -> None:
    p = command(
        sub,
        "monitor",
        help="read a `pneumo serve` prediction log: summary, drift",
        description="Reports on the prediction log written by `pneumo serve`: a SQLite file, or "
        "the PostgreSQL database that servers share.",
    )
    msub = p.add_subparsers(dest="monitor_command", metavar="REPORT", required=True)
    s = command(
        msub,
        "summary",
        help="counts, class rates, score distribution, latency percentiles",
        description="What the prediction log holds for the last N hours.",
    )
    s.add_argument(
        "--db",
        required=True,
        metavar="PATH|URL",
        help="the prediction log: a SQLite file, or a postgresql:// URL",
    )
    s.add_argument("--hours", type=positive_float, default=24.0, help="window in hours")
    add_json_option(s, "the summary")
    s.set_defaults(handler=run)
    d = command(
        msub,
        "drift",
        help="recent predictions vs a reference window: class rates and score PSI",
        description="Compare the last --recent-hours with the time before it, back to "
        "--reference-hours ago: class-rate change and the population stability index (PSI) of "
        "the scores. Exit 1 when the drift is significant (PSI > 0.25 or a class rate moved "
        "by more than 0.1).",
    )
    d.add_argument(
        "--db",
        required=True,
        metavar="PATH|URL",
        help="the prediction log: a SQLite file, or a postgresql:// URL",
    )
    d.add_argument("--recent-hours", type=positive_float, default=24.0, help="recent window")
    d.add_argument(
        "--reference-hours", type=positive_float, default=168.0, help="reference window start"
    )
    add_json_option(d, "the drift report")
    d.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pneumo_onnx.engine.serve.store import reports

    target = json_target(args)
    if args.monitor_command == "summary":
        report = reports.summarize(args.db, hours=args.hours)
        lines = summary_lines(report)
        code = EXIT_OK
    else:
        report = reports.drift_report(
            args.db, recent_hours=args.recent_hours, reference_hours=args.reference_hours
        )
        lines = drift_lines(report)
        code = EXIT_FAILED if report["drift_detected"] else EXIT_OK
    if target != STDIO:
        print("\n".join(lines))
    if target is not None:
        write_json(target, report)
    return code


def summary_lines(s: dict[str, Any]) -> list[str]:
    """A summary as a small human-readable table."""
    w = s["window"]
    lines = [
        f"prediction log {s['db']}: last {w['hours']:g} h ({w['start']} .. {w['end']})",
        f"  predictions  {s['total']}  (scored {s['scored']}, errors {s['errors']}, "
        f"{s['per_hour']:.1f}/h)",
    ]
    if s["by_source"]["job"]:
        lines.append(f"  of them      {s['by_source']['job']} from batch jobs (not in latency)")
    for label, c in s["classes"].items():
        lines.append(f"  {label:<12} {c['count']:>7}  {c['rate']:6.1%}")
    if s["scored"]:
        lines.append(
            f"  mean score   {s['score']['mean']:.4f}   mean confidence "
            f"{s['confidence']['mean']:.4f}"
        )
        lines.append(
            "  score bins   " + " ".join(f"{n}" for n in s["score"]["histogram"]["counts"])
        )
    lat = s["latency_ms"]
    if lat["p50"] is not None:
        lines.append(
            f"  latency ms   p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}  p99 {lat['p99']:.1f}  "
            f"max {lat['max']:.1f}"
        )
    for v in s["by_model_version"]:
        mean = "-" if v["mean_score"] is None else f"{v['mean_score']:.4f}"
        lines.append(
            f"  model {v['model_name']} v{v['model_version']}: {v['total']} predictions, "
            f"{v['errors']} errors, mean score {mean}"
        )
    if not s["total"]:
        lines.append("  no predictions in this window")
    return lines


def drift_lines(d: dict[str, Any]) -> list[str]:
    """A drift report as a few human-readable lines."""
    from pneumo_onnx.engine.serve.store import reports

    rec, ref = d["recent"], d["reference"]
    lines = [
        f"drift: {d['status'].upper().replace('_', ' ')}  ({d['db']})",
        f"  recent     {rec['start']} .. {rec['end']}  {rec['scored']} scored",
        f"  reference  {ref['start']} .. {ref['end']}  {ref['scored']} scored",
    ]
    if d["psi"] is not None:
        lines.append(
            f"  score PSI  {d['psi']:.4f} ({d['psi_level']}; moderate >= {reports.PSI_MODERATE:g}, "
            f"significant > {reports.PSI_SIGNIFICANT:g})"
        )
        for label, r in d["class_rates"].items():
            lines.append(
                f"  {label:<10} {r['reference']:6.1%} -> {r['recent']:6.1%}  ({r['change']:+.1%})"
            )
    else:  # no figures to show: say why
        lines += [f"  {m}" for m in d["messages"]]
    return lines
