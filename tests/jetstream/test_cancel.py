"""Stopping a loop that talks to NATS: nats-py can turn a cancellation that lands inside a
request into a timeout error, which the loops here survive like any error. `log.cancel` and
`log.stopping` make such a loop end anyway, and never let a stop wait for ever."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aisfusion.jetstream import log as jlog


async def test_a_loop_that_swallows_its_cancellation_still_ends() -> None:
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while not jlog.stopping():
            rounds += 1
            # A request in flight whose cancellation the client library turns into an error.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    task = asyncio.get_running_loop().create_task(loop())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await jlog.cancel(task, timeout_s=5.0)
    assert task.done()
    assert rounds == 1
    assert time.monotonic() - started < 5.0


async def test_a_task_that_never_ends_does_not_hold_up_the_stop() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():  # ignores the cancellation and the flag
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.05)

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await jlog.cancel(task, timeout_s=0.2)  # returns, with a warning
    assert time.monotonic() - started < 1.0
    assert not task.done()
    release.set()
    await task
