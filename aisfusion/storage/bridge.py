"""The one bridge between pykka threads and asyncio storage clients.

asyncpg and redis-py asyncio need an event loop; pykka actors are threads that must not touch
the feed loop. `AsyncBridge` owns a dedicated storage event loop in its own thread and offers
`submit(coroutine) -> concurrent.futures.Future`, so an actor blocks only its own thread while
its I/O runs, and the feed loop never waits for storage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

log = logging.getLogger(__name__)
T = TypeVar("T")


class AsyncBridge:
    """A storage event loop running in its own thread."""

    def __init__(self, name: str = "storage-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()
        log.debug("%s started", self._name)

    def _run(self) -> None:
        loop = uvloop.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def running(self) -> bool:
        return self._loop is not None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule `coro` on the storage loop; safe from any thread but that loop's own."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{self._name} is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the storage loop and wait for its result (from an actor thread)."""
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        """Stop the loop and join its thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = None
        self._thread = None
        self._ready.clear()
