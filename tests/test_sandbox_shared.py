"""The input area a worker shares with its parent (engine.runtime.sandbox.shared): uploads
cross through it whole, larger ones through the pipe, and the worker can neither write to it
nor shrink it under its parent."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys

import pytest

from pneumo_onnx.engine.runtime.sandbox import Limits, Sandbox
from pneumo_onnx.engine.runtime.sandbox.shared import AREA_BYTES
from tests import sandbox_tasks as tasks

MB = 2**20
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd: Linux")


def test_inputs_arrive_whole_through_the_area_and_the_pipe_in_turn() -> None:
    limits = Limits(memory=64 * MB, allowance=8 * MB, max_input=2 * AREA_BYTES, seconds=5.0)
    sizes = [300_000, AREA_BYTES, AREA_BYTES + 1, 1, 5 * MB, 120_000]  # area, pipe, area...
    inputs = [os.urandom(n) for n in sizes]
    with Sandbox(1, limits, ("tests.sandbox_tasks",)) as sb:
        for data in inputs:  # one worker: each input overwrites the last one's place
            answer = sb.call(tasks.digest, data, input_bytes=len(data))
            assert answer == (hashlib.sha256(data).hexdigest(), len(data))

        async def from_the_loop() -> list[tuple[str, int]]:
            return [await sb.acall(tasks.digest, d, input_bytes=len(d)) for d in inputs]

        expected = [(hashlib.sha256(d).hexdigest(), len(d)) for d in inputs]
        assert asyncio.run(from_the_loop()) == expected


def test_a_worker_can_neither_write_to_nor_shrink_its_input_area() -> None:
    limits = Limits(memory=64 * MB, allowance=8 * MB, max_input=MB, seconds=5.0)
    with Sandbox(1, limits, ("tests.sandbox_tasks",)) as sb:
        outcomes = sb.call(tasks.tamper_with_input_area)
        assert len(outcomes) == 6  # it found the area, and tried every way
        assert "done" not in outcomes.values(), outcomes
        data = os.urandom(500_000)  # and the area still carries the next input whole
        assert sb.call(tasks.digest, data, input_bytes=len(data))[0] == (
            hashlib.sha256(data).hexdigest()
        )
