"""The sandbox with real worker processes: memory grants enforced by the kernel, deadlines,
crashes, replacement, refusals, streaming, and what the parent will not unpickle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pneumo_onnx
from pneumo_onnx.engine.errors import ImageError, UsageError
from pneumo_onnx.engine.runtime.sandbox import Limits, Sandbox
from tests import sandbox_tasks as tasks

MB = 2**20


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    limits = Limits(memory=128 * MB, allowance=16 * MB, max_input=MB, seconds=2.0)
    with Sandbox(2, limits, ("tests.sandbox_tasks",)) as sb:
        yield sb


def test_a_call_returns_what_the_task_returns(sandbox: Sandbox) -> None:
    assert sandbox.call(tasks.echo, {"a": [1, 2.5, "x", b"y"]}) == {"a": [1, 2.5, "x", b"y"]}
    big = os.urandom(300_000)  # crosses the pipe out of band
    assert sandbox.call(tasks.echo, big, input_bytes=len(big)) == big


def test_memory_past_the_grant_fails_in_the_worker_not_here(sandbox: Sandbox) -> None:
    """A task that announces 8 MB and fills 100 MB gets a MemoryError in its worker; the
    caller gets an ImageError that says so, and the same worker serves on."""
    replaced = sandbox.replaced
    with pytest.raises(ImageError, match=r"^scan.dcm needs more memory to decode than its"):
        sandbox.call(tasks.allocate, 8, 100, name="scan.dcm")
    assert sandbox.call(tasks.allocate, 60, 50) == 1  # within what it announced
    with pytest.raises(ImageError, match=r"before its content is even decoded"):
        sandbox.call(tasks.allocate_before_asking, 100, name="x.tif")
    assert sandbox.replaced == replaced  # nobody was killed


def test_a_grant_over_the_budget_is_refused_before_the_decode(sandbox: Sandbox) -> None:
    with pytest.raises(ImageError, match=r"would take about 200 MB to decode, over the 128 MB"):
        sandbox.call(tasks.granted, 200, None, name="big.png")


def test_the_callers_admission_sees_what_the_header_said(sandbox: Sandbox) -> None:
    seen: list[object] = []

    def admit(info: object) -> None:
        seen.append(info)
        if info == "too many pixels":
            raise UsageError("refused by the caller")

    assert sandbox.call(tasks.granted, 100, "fine", admit=admit) == "granted"  # asked
    assert sandbox.call(tasks.granted, 1, "small", admit=admit) == "granted"  # pregranted
    with pytest.raises(UsageError, match="refused by the caller"):
        sandbox.call(tasks.granted, 100, "too many pixels", admit=admit)
    assert seen == ["fine", "small", "too many pixels"]


def test_a_task_past_its_deadline_is_killed_and_replaced(sandbox: Sandbox) -> None:
    replaced = sandbox.replaced
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"^slow.png took more than 2 s to decode: refused$"):
        sandbox.call(tasks.sleep, 60, name="slow.png")
    assert time.monotonic() - started < 4
    assert sandbox.replaced == replaced + 1
    assert sandbox.call(tasks.sleep, 0) == "woke"


def test_a_crashing_decoder_is_replaced(sandbox: Sandbox) -> None:
    with pytest.raises(ImageError, match=r"the decoder stopped \(killed by SIGSEGV\)"):
        sandbox.call(tasks.crash, name="bad.jpeg")
    assert sandbox.call(tasks.echo, 1) == 1


def test_a_worker_killed_while_idle_is_replaced(sandbox: Sandbox) -> None:
    pids = {sandbox.call(tasks.pid) for _ in range(6)}
    for p in pids:
        os.kill(p, 9)
    time.sleep(0.2)
    assert sandbox.call(tasks.echo, "still here") == "still here"
    assert not pids & {sandbox.call(tasks.pid) for _ in range(6)}


def test_task_errors_cross_as_our_errors(sandbox: Sandbox) -> None:
    with pytest.raises(ImageError, match=r"^x.gif is not an image$"):
        sandbox.call(tasks.refuse_bad, "x.gif")


def test_workers_write_no_files(sandbox: Sandbox, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="File too large"):
        sandbox.call(tasks.write_file, str(tmp_path / "out.txt"))
    assert not (tmp_path / "out.txt").exists() or (tmp_path / "out.txt").stat().st_size == 0


# A worker's environment, as a parent started with `argv[1]` ('fork' or 'spawn') sees it. A
# fresh interpreter: pytest's threads would keep a fork from being a fork (`may_fork`).
WORKER_ENVIRONMENT = """
import json, sys
from pneumo_onnx.engine.runtime.sandbox import Limits, Sandbox
from pneumo_onnx.engine.runtime.sandbox.starting import may_fork
from tests import sandbox_tasks
fork = sys.argv[1] == "fork"
assert may_fork() or not fork
with Sandbox(1, Limits(seconds=20.0), ("tests.sandbox_tasks",), fork=fork) as sb:
    print(json.dumps(sb.call(sandbox_tasks.environment)))
"""


@pytest.mark.parametrize("start", ["spawn", "fork"])
def test_workers_see_none_of_the_parents_secrets(start: str) -> None:
    # What a server's environment holds beside its decoders: keys, a database's password, the
    # config a --workers process is handed (keys included).
    secrets = {
        "PNEUMO_API_KEYS": "key-that-must-not-leak",
        "PNEUMO_SERVE_CONFIG": '{"api_keys": ["key-that-must-not-leak"]}',
        "DATABASE_URL": "postgresql://u:password-that-must-not-leak@db/x",
    }
    root = Path(pneumo_onnx.__file__).resolve().parents[1]
    env = {**os.environ, **secrets, "LC_ALL": "C.UTF-8", "PYTHONPATH": str(root)}
    argv = [sys.executable, "-c", WORKER_ENVIRONMENT, start]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    environment = json.loads(out.stdout)
    assert not any("must-not-leak" in v for v in environment.values())
    assert not set(secrets) & set(environment)
    assert environment["LC_ALL"] == "C.UTF-8"  # what the interpreter uses is kept
    assert environment["OPENBLAS_NUM_THREADS"] == "1"
    assert environment["PYTHONPATH"].split(os.pathsep)[0] == str(root)


def test_answers_that_would_run_code_here_are_refused(sandbox: Sandbox) -> None:
    with pytest.raises(ImageError, match=r"the decoder answered a posix.system, which is not"):
        sandbox.call(tasks.evil)


def test_a_frame_that_lies_about_its_size_costs_the_parent_nothing(sandbox: Sandbox) -> None:
    """The parent reads what arrives, never what a frame announces, before it arrives."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="the decoder stopped"):
        sandbox.call(tasks.lie_about_size, 1 << 40)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KB
    assert sandbox.call(tasks.echo, "still serving") == "still serving"


def test_inputs_over_the_limit_never_reach_a_worker(sandbox: Sandbox) -> None:
    with pytest.raises(ImageError, match=r"^huge.dcm is 2.0 MB, over the 1 MB limit"):
        sandbox.call(tasks.echo, b"x", name="huge.dcm", input_bytes=2 * MB)


def test_a_stream_hands_over_items_one_at_a_time(sandbox: Sandbox) -> None:
    assert list(sandbox.stream(tasks.emit, 5)) == [0, 1, 2, 3, 4]
    assert sandbox.call(tasks.echo, "after") == "after"


def test_workers_end_with_the_sandbox() -> None:
    sb = Sandbox(1, Limits(), ("tests.sandbox_tasks",))
    pid = sb.call(tasks.pid)
    sb.close()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_a_task_stuck_at_its_memory_limit_is_stopped(sandbox: Sandbox) -> None:
    """A parser that catches MemoryError and tries again would spin at its limit until the
    deadline: it is stopped once it has stayed there a second."""
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"stayed at its memory limit\): refused$"):
        sandbox.call(tasks.swallow_memory_errors, name="x.tif")
    assert time.monotonic() - started < 1.9  # well before the 2 s deadline
    assert sandbox.call(tasks.echo, 1) == 1


# --- calls from an event loop (the server's decode path) ------------------------------------


def test_acall_answers_as_call_does(sandbox: Sandbox) -> None:
    import asyncio

    big = os.urandom(300_000)

    async def main() -> None:
        assert await sandbox.acall(tasks.echo, big, input_bytes=len(big)) == big
        with pytest.raises(ImageError, match=r"^x.gif is not an image$"):
            await sandbox.acall(tasks.refuse_bad, "x.gif")
        with pytest.raises(ImageError, match=r"would take about 200 MB to decode"):
            await sandbox.acall(tasks.granted, 200, None, name="big.png")
        assert await sandbox.acall(tasks.granted, 100, "fine") == "granted"  # asked, granted
        with pytest.raises(ImageError, match=r"the decoder answered a posix.system"):
            await sandbox.acall(tasks.evil)

    asyncio.run(main())


def test_a_worker_that_stops_mid_message_never_holds_the_loop() -> None:
    """Half a frame, then silence: the loop goes on (a ticker keeps ticking) until the call's
    deadline kills the worker; the next call gets a fresh one."""
    import asyncio

    limits = Limits(memory=64 * MB, allowance=16 * MB, max_input=MB, seconds=1.0)

    async def main(sb: Sandbox) -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        tick = asyncio.get_running_loop().create_task(ticker())
        with pytest.raises(ImageError, match="took more than 1 s to decode"):
            await sb.acall(tasks.half_a_frame, name="stuck.jpeg")
        tick.cancel()
        assert await sb.acall(tasks.echo, "again") == "again"
        return ticks

    with Sandbox(1, limits, ("tests.sandbox_tasks",)) as sb:
        assert asyncio.run(main(sb)) >= 10


def test_a_worker_that_stops_reading_meets_its_deadline() -> None:
    """An input larger than the pipe, to a worker that no longer reads (stopped): the loop
    writes what the pipe takes, goes on, and kills the worker at the call's deadline."""
    import asyncio
    import signal

    limits = Limits(memory=64 * MB, allowance=16 * MB, max_input=8 * MB, seconds=1.0)
    big = os.urandom(4 * MB)
    with Sandbox(1, limits, ("tests.sandbox_tasks",)) as sb:
        os.kill(sb.call(tasks.pid), signal.SIGSTOP)

        async def main() -> None:
            with pytest.raises(ImageError, match="took more than 1 s"):
                await sb.acall(tasks.echo, big, input_bytes=len(big), name="big.jpeg")
            assert await sb.acall(tasks.echo, big, input_bytes=len(big)) == big  # a new one

        asyncio.run(main())


def test_threads_and_coroutines_wait_their_turn_for_one_worker() -> None:
    """One worker, calls from threads and from a loop at once: each is served, in order."""
    import asyncio
    import threading

    limits = Limits(memory=64 * MB, allowance=16 * MB, max_input=MB, seconds=5.0)
    with Sandbox(1, limits, ("tests.sandbox_tasks",)) as sb:
        done: list[str] = []
        threads = [
            threading.Thread(target=lambda i=i: done.append(sb.call(tasks.sleep, 0.1) + f"t{i}"))
            for i in range(3)
        ]

        async def main() -> list[str]:
            for t in threads:
                t.start()
            return await asyncio.gather(*(sb.acall(tasks.sleep, 0.1) for _ in range(3)))

        answers = asyncio.run(main())
        for t in threads:
            t.join()
        assert len(answers) == 3 and len(done) == 3
        assert sb.queue_delay() == 0.0


def test_closing_fails_the_calls_waiting_for_a_worker() -> None:
    import asyncio

    from pneumo_onnx.engine.errors import Overloaded

    limits = Limits(memory=64 * MB, allowance=16 * MB, max_input=MB, seconds=5.0)
    sb = Sandbox(1, limits, ("tests.sandbox_tasks",))

    async def main() -> None:
        busy = asyncio.ensure_future(sb.acall(tasks.sleep, 0.5))
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(sb.acall(tasks.echo, 1))
        await asyncio.sleep(0.1)
        sb.close()
        with pytest.raises(Overloaded, match="shutting down"):
            await waiting
        # the busy call ends too (its worker may die with the starter thread: not waited on)
        await asyncio.gather(busy, return_exceptions=True)

    asyncio.run(main())
