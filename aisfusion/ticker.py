"""The ticker: one thread that tells `Tick` to the actors that flush or supervise on time."""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka

from aisfusion.messages import Tick
from aisfusion.supervisors.supervisor import Slot


class Ticker:
    """A thread that tells `Tick` to the actors that flush on time (and supervise)."""

    def __init__(self, interval_s: float, targets: list[pykka.ActorRef[Any] | Slot]) -> None:
        self._interval = interval_s
        self._targets = targets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            tick = Tick(time.monotonic())
            for target in self._targets:
                try:
                    target.tell(tick)
                except pykka.ActorDeadError:
                    continue  # stopping, or being restarted by its supervisor

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
