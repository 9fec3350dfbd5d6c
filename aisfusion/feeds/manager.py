"""Every configured feed, started and stopped from one place.

`FeedSet.start` opens the TCP server (``[feed]``), the UDP ports (``[[feed.udp]]``) and the
outgoing TCP clients (``[[feed.clients]]``); `FeedSet.stop` closes them all, open
connections included, delivers what they had already sent, and returns within a bounded
time whatever the peers do.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from aisfusion.config import FeedConfig
from aisfusion.errors import ConfigError
from aisfusion.feeds.client import Sleep, TcpClientFeed
from aisfusion.feeds.stream import Clock, FeedSource, Sink
from aisfusion.feeds.tcp import TcpServer, start_tcp_server
from aisfusion.feeds.udp import UdpFeed, start_udp
from aisfusion.metrics import Metrics

logger = logging.getLogger(__name__)


def name_problems(config: FeedConfig) -> list[str]:
    """Feed names used twice: they would merge two feeds' messages and metrics."""
    seen = {config.source: "feed.source"}
    problems: list[str] = []
    named = [("clients", i, c.name) for i, c in enumerate(config.clients)]
    named += [("udp", i, u.name) for i, u in enumerate(config.udp)]
    for kind, i, name in named:
        path = f"feed.{kind}[{i}].name"
        if name in seen:
            problems.append(f"{path}: {name!r} is already the name of {seen[name]}")
        else:
            seen[name] = path
    return problems


class FeedSet:
    """The TCP server, UDP listeners and TCP clients of one service.

    `clock`, `rng` and `sleep` are for tests: the time base of the last-message age, the
    jitter of the reconnect backoff and the wait between reconnects.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._close_timeout_s = close_timeout_s
        self.server: TcpServer | None = None
        self.udp: dict[str, UdpFeed] = {}
        self.clients: dict[str, TcpClientFeed] = {}

    async def start(self, config: FeedConfig, sink: Sink, metrics: Metrics) -> None:
        """Open every feed; if one cannot be opened, close the others and raise."""
        problems = name_problems(config)
        if problems:
            raise ConfigError(problems)
        try:
            self.server = await start_tcp_server(config, sink, metrics, clock=self._clock)
            for udp in config.udp:
                source = FeedSource(udp.name, config, sink, metrics, clock=self._clock)
                try:
                    self.udp[udp.name] = await start_udp(udp, source)
                except BaseException:
                    source.close()
                    raise
            for cfg in config.clients:
                source = FeedSource(cfg.name, config, sink, metrics, clock=self._clock)
                client = TcpClientFeed(cfg, source, rng=self._rng, sleep=self._sleep)
                self.clients[cfg.name] = client
                client.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Close listeners, connections and clients; idempotent, bounded in time."""
        server, self.server = self.server, None
        udp, self.udp = list(self.udp.values()), {}
        clients, self.clients = list(self.clients.values()), {}
        # Stop all input at once, then wait for each to flush.
        if server is not None:
            server.close()
        for listener in udp:
            listener.close()
        timeout = self._close_timeout_s
        await asyncio.gather(
            *(client.stop() for client in clients),
            *(listener.wait_closed(timeout) for listener in udp),
            *([server.wait_closed(timeout)] if server is not None else []),
        )

    @property
    def tcp_port(self) -> int:
        """The port the TCP server listens on (useful with ``port = 0``)."""
        if self.server is None:
            raise RuntimeError("feed listener not running")
        return self.server.port

    @property
    def udp_ports(self) -> dict[str, int]:
        return {name: listener.port for name, listener in self.udp.items()}
