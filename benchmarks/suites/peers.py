"""`peers` (not in the default set): the same ONNX model, with the same preprocessing, served
by what a user would pick instead of `pneumo serve`: plain FastAPI + uvicorn, PyTriton (the
real Triton server), BentoML and LitServe, each in its own virtualenv
(benchmarks.peer_envs) and set up as its own documentation shows (benchmarks.peers), against
`pneumo serve` on its seed route and on KServe V2. One server at a time, the same load
(benchmarks.loadgen: unique full-resolution JPEGs) at each concurrency, rounds in alternating
order; every peer's answers checked against `Engine.predict` on the same files; pneumo's
requests/s and p99 against the best peer's at each concurrency, on both routes.
"""

from __future__ import annotations

from typing import Any

from benchmarks.environment import MODEL_DIR, ROOT
from benchmarks.memory import TreeMemory
from benchmarks.peer_envs import PEERS, Peer, PeerUnavailable, peer_env, venv_python
from benchmarks.suites import Context, Skip, loadgen_argv
from benchmarks.suites.serve import (
    free_port,
    pneumo_serve_missing,
    running,
    server_argv,
)
from benchmarks.timing import ProcessFailed, json_from_stdout, ratio, run_process
from pneumo_onnx.engine.contract import Contract
from pneumo_onnx.engine.runtime.fidelity import MAX_SCORE_DIFF

PNEUMO = {"pneumo-seed": "seed", "pneumo-v2": "v2"}  # row name -> route of `pneumo serve`
GOAL = 1.5  # issue 24: pneumo's requests/s over the best peer's, with a lower p99
MAX_BATCH, DELAY_MS = 16, 5.0  # every batching peer's setting


def run(ctx: Context) -> dict[str, Any]:
    from pneumo_onnx.engine.runtime.engine import Engine

    with Engine.load(str(MODEL_DIR)) as engine:
        contract = engine.contract
        unsupported = peer_args_problem(contract)
        reference = reference_scores(engine, ctx)
    skipped: dict[str, str] = {}
    if unsupported:
        skipped.update({name: unsupported for name in ctx.peers})
    if why := pneumo_serve_missing():
        raise Skip(why)
    pythons: dict[str, str] = {}
    for name in ctx.peers:
        if name in skipped:
            continue
        try:
            pythons[name] = str(venv_python(PEERS[name]))
        except PeerUnavailable as e:
            skipped[name] = str(e)
    targets = ["pneumo", *pythons]  # `pneumo` serves both of its routes in one start
    measured: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(ctx.rounds):
        order = targets if r % 2 == 0 else targets[::-1]  # alternate, so drift evens out
        levels = ctx.peer_concurrency if r % 2 == 0 else ctx.peer_concurrency[::-1]
        for target in order:
            if target in skipped:
                continue
            try:
                for row in _round(ctx, target, pythons.get(target), contract, levels):
                    measured.setdefault((row["name"], row["concurrency"]), []).append(row)
            except ProcessFailed as e:
                skipped[target] = f"could not be started or measured here: {e}"
    rows = []
    for (name, _), runs in measured.items():
        if ("pneumo" if name in PNEUMO else name) in skipped:
            continue
        scores = {k: v for m in runs for k, v in m.pop("scores", {}).items()}
        row = _median(runs)
        row["answers"] = compare_answers(scores, reference, contract.threshold)
        rows.append(row)
    return {
        "baseline": None,
        "requests": ctx.requests,
        "concurrency": ctx.peer_concurrency,
        "rounds": ctx.rounds,
        "reference": f"Engine.predict ({len(reference)} images), tolerance {MAX_SCORE_DIFF}",
        "rows": rows,
        "ratios": best_peer_ratios(rows),
        "skipped": [{"name": k, "reason": v} for k, v in skipped.items()],
    }


def peer_args_problem(contract: Contract) -> str | None:
    """Why the peers' plain PIL pipeline (decode, RGB, resize, x multiply / divide) cannot
    state this model's contract, or None."""
    spec, s = contract.input, contract.input.scaler()
    plain = (
        spec.layout == "NHWC"
        and spec.color == "rgb"
        and spec.channels == 3
        and spec.resize_mode == "stretch"
        and not spec.pre_resize
        and spec.resize_filter in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
        and not any(s.mean)
        and all(v == 1.0 for v in s.std)
    )
    return None if plain else f"the peers implement a plain PIL pipeline, not {spec.describe()}"


def peer_argv(python: str, peer: Peer, port: int, contract: Contract) -> list[str]:
    """The peer's command line: the contract's facts, from the model's own metadata."""
    spec = contract.input
    return [
        python,
        "-m",
        f"benchmarks.peers.{peer.module}",
        f"--port={port}",
        f"--model={MODEL_DIR / 'model.onnx'}",
        f"--height={spec.height}",
        f"--width={spec.width}",
        f"--resize-filter={spec.resize_filter}",
        f"--multiply={spec.scaler().multiply!r}",
        f"--divide={spec.scaler().divide!r}",
        f"--threshold={contract.threshold}",
        f"--labels={contract.negative_label},{contract.positive_label}",
        f"--max-batch={MAX_BATCH}",
        f"--delay-ms={DELAY_MS}",
    ]


def reference_scores(engine: Any, ctx: Context) -> dict[str, float]:
    """`Engine.predict`'s score of each JPEG the load generator sends, by its path under the
    folder (the load generator's key)."""
    from pneumo_onnx.engine.runtime.listing import list_images

    jpegs = [p for p in list_images(ctx.folder) if p.suffix.lower() in (".jpg", ".jpeg")]
    return {
        p.relative_to(ctx.folder).as_posix(): float(engine.predict(p)["raw_score"]) for p in jpegs
    }


def compare_answers(
    scores: dict[str, float],
    reference: dict[str, float],
    threshold: float,
    tolerance: float = MAX_SCORE_DIFF,
) -> dict[str, Any]:
    """A server's scores against the reference's on the same files: max |diff|, label
    agreement, and `flagged` with why when a score strays past `tolerance` (the bound the
    engine keeps between its own two preprocessing paths) or a label differs on an image
    whose reference score lies farther than `tolerance` from the threshold."""
    common = sorted(set(scores) & set(reference))
    if not common:
        return {"images": 0, "flagged": True, "why": "no answers to compare"}
    diffs = {k: abs(scores[k] - reference[k]) for k in common}
    flips = [k for k in common if (scores[k] > threshold) != (reference[k] > threshold)]
    far = [k for k in flips if abs(reference[k] - threshold) > tolerance]
    worst = max(diffs.values())
    why = []
    if worst > tolerance:
        why.append(f"max |diff| {worst:.4f} > {tolerance}")
    if far:
        why.append(f"{len(far)} labels differ away from the threshold (e.g. {far[0]})")
    return {
        "images": len(common),
        "max_abs_diff": round(worst, 6),
        "labels_agree": len(common) - len(flips),
        "labels_differ": len(flips),
        "flagged": bool(why),
        "why": "; ".join(why),
    }


def best_peer_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each pneumo route and concurrency: the peer with the most requests/s among those
    whose answers are not flagged and that had no errors, and pneumo's ratio to it, with
    both p99s and whether pneumo meets the goal (>= GOAL x and a lower p99)."""
    out = []
    for pneumo in (r for r in rows if r["name"] in PNEUMO):
        peers = [
            r
            for r in rows
            if r["name"] not in PNEUMO
            and r["concurrency"] == pneumo["concurrency"]
            and not r["errors"]
            and not r.get("answers", {}).get("flagged")
        ]
        if not peers:
            continue
        best = max(peers, key=lambda r: r["requests_per_second"])
        x = ratio(pneumo["requests_per_second"], best["requests_per_second"])
        p99, peer_p99 = _p99(pneumo), _p99(best)
        lower = p99 is not None and peer_p99 is not None and p99 < peer_p99
        out.append(
            {
                "route": PNEUMO[pneumo["name"]],
                "concurrency": pneumo["concurrency"],
                "best_peer": best["name"],
                "requests_per_second_ratio": x,
                "p99_ms": p99,
                "best_peer_p99_ms": peer_p99,
                "meets_goal": bool(x and x >= GOAL and lower),
            }
        )
    return out


def _p99(row: dict[str, Any]) -> float | None:
    return (row.get("latency_ms") or {}).get("p99")


def _round(
    ctx: Context, target: str, python: str | None, contract: Contract, levels: list[int]
) -> list[dict[str, Any]]:
    """One start of `target`, the load at each concurrency; pneumo: on both routes."""
    port = free_ports(PEERS[target].ports if target in PEERS else 1)
    log = ctx.workdir / f"peer-{target}.log"
    if python is None:
        argv, health, env = server_argv("pneumo", port, ctx.workdir), "/health", None
        routes = list(PNEUMO.items())
    else:
        peer = PEERS[target]
        argv, health = peer_argv(python, peer, port, contract), peer.health
        env = peer_env(ROOT)
        routes = [(target, peer.route)]
    rows = []
    with running(argv, port, log, health, cwd=ROOT, env=env) as (proc, ready):
        for c in levels:
            for name, route in routes:
                rows.append(_load(ctx, proc.pid, port, name, route, c) | {"ready_seconds": ready})
    return rows


def _load(ctx: Context, pid: int, port: int, name: str, route: str, c: int) -> dict[str, Any]:
    argv = loadgen_argv(port, ctx.folder, ctx.requests, c, pid, f"--route={route}", "--scores")
    memory = TreeMemory(pid, interval=0.02).start()
    try:
        report = json_from_stdout(run_process(argv)["stdout"])
    finally:
        memory.stop()
    report.pop("server_peak_rss_mb", None)  # VmHWM since start: the sampled tree peak instead
    peer = PEERS.get(name)
    return {
        "name": name,
        "route": route,
        "setup": peer.setup if peer else "pneumo serve, defaults",
        **report,
        "peak_tree_rss_mb": round(memory.peak_mb(), 1),
    }


def free_ports(n: int) -> int:
    """A port with the n - 1 after it free too (a peer that listens on several)."""
    import socket

    for _ in range(50):
        base = free_port()
        try:
            for p in range(base + 1, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise ProcessFailed(f"no {n} consecutive free loopback ports")


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s, every round's requests/s, p99 and CPU beside."""
    ordered = sorted(runs, key=lambda m: m["requests_per_second"])
    row = dict(ordered[len(ordered) // 2])
    row["rounds_requests_per_second"] = [m["requests_per_second"] for m in runs]
    row["rounds_p99_ms"] = [_p99(m) for m in runs]
    cpu = sorted(m["server_cpu_ms_per_request"] for m in runs if "server_cpu_ms_per_request" in m)
    if cpu:  # steadier than throughput on a shared machine
        row["server_cpu_ms_per_request"] = cpu[len(cpu) // 2]
    return row
