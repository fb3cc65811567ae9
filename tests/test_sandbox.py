"""The sandbox with real worker processes: memory grants enforced by the kernel, deadlines,
crashes, replacement, refusals, streaming, and what the parent will not unpickle."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def test_answers_that_would_run_code_here_are_refused(sandbox: Sandbox) -> None:
    with pytest.raises(ImageError, match=r"the decoder answered a posix.system, which is not"):
        sandbox.call(tasks.evil)


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
