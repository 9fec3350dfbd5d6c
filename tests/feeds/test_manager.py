"""FeedSet: every configured feed started and stopped together; feed settings as loaded."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from aisfusion.config import FeedConfig, TcpClientFeedConfig, UdpFeedConfig, load
from aisfusion.errors import ConfigError
from aisfusion.feeds.manager import FeedSet, name_problems
from aisfusion.messages import RawMessage
from aisfusion.metrics import Metrics
from tests.feeds.test_client import Upstream, stall
from tests.feeds.test_tcp import GOOD, wait_until


def value(metrics: Metrics, name: str, source: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"source": source})


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_stop_closes_everything_with_peers_still_connected() -> None:
    """Receivers that never hang up, an upstream that never stops: stop must not hang."""

    async def hold(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(GOOD + GOOD.rstrip())
        await writer.drain()
        await stall(upstream, reader)

    upstream = Upstream(hold)
    config = FeedConfig(
        host="127.0.0.1",
        port=0,
        source="tcp",
        clients=(TcpClientFeedConfig(name="up", host="127.0.0.1", port=await upstream.start()),),
        udp=(UdpFeedConfig(name="udp", host="127.0.0.1", port=0),),
    )
    metrics = Metrics()
    messages: list[RawMessage] = []
    feeds = FeedSet()
    await feeds.start(config, messages.extend, metrics)
    receivers = []
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", feeds.tcp_port)
            writer.write(GOOD + GOOD.rstrip())  # the second line is left unterminated
            receivers.append((reader, writer))
        loop = asyncio.get_running_loop()
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("127.0.0.1", feeds.udp_ports["udp"])
        )
        sender.sendto(GOOD)
        await wait_until(lambda: len(messages) == 5)
        assert value(metrics, "aisfusion_feed_connections", "tcp") == 3
        assert value(metrics, "aisfusion_feed_connections", "up") == 1
        assert value(metrics, "aisfusion_feed_connections", "udp") == 1

        async with asyncio.timeout(10):
            await feeds.stop()
            for reader, _ in receivers:
                assert await reader.read() == b""
        await wait_until(lambda: upstream.finished == 1)  # the client hung up on upstream
        # Every unterminated last line was delivered on the way out.
        assert len(messages) == 3 * 2 + 2 + 1
        assert {m.source for m in messages} == {"tcp", "up", "udp"}
        for source in ("tcp", "up", "udp"):
            assert value(metrics, "aisfusion_feed_connections", source) == 0
            assert value(metrics, "aisfusion_feed_last_message_age_seconds", source) is None
        await feeds.stop()  # idempotent
        sender.close()
    finally:
        for _, writer in receivers:
            writer.close()
        await feeds.stop()
        await upstream.stop()


async def test_last_message_age_is_read_from_the_clock_at_scrape_time() -> None:
    now = [1000.0]
    feeds = FeedSet(clock=lambda: now[0])
    metrics = Metrics()
    messages: list[RawMessage] = []
    await feeds.start(FeedConfig(host="127.0.0.1", port=0), messages.extend, metrics)
    try:
        age = "aisfusion_feed_last_message_age_seconds"
        assert value(metrics, age, "tcp") == 0.0
        now[0] += 7.5  # no message yet: the age counts from the start
        assert value(metrics, age, "tcp") == 7.5
        _, writer = await asyncio.open_connection("127.0.0.1", feeds.tcp_port)
        writer.write(GOOD)
        await wait_until(lambda: len(messages) == 1)
        assert value(metrics, age, "tcp") == 0.0
        now[0] += 3.0
        assert value(metrics, age, "tcp") == 3.0
        writer.close()
    finally:
        await feeds.stop()


def test_feed_names_must_be_unique_across_kinds() -> None:
    config = FeedConfig(
        source="a",
        clients=(TcpClientFeedConfig(name="b", host="h", port=1),),
        udp=(UdpFeedConfig(name="a", port=0), UdpFeedConfig(name="b", port=0)),
    )
    assert name_problems(config) == [
        "feed.udp[0].name: 'a' is already the name of feed.source",
        "feed.udp[1].name: 'b' is already the name of feed.clients[0].name",
    ]


async def test_start_refuses_duplicate_names_and_opens_nothing() -> None:
    feeds = FeedSet()
    config = FeedConfig(host="127.0.0.1", port=0, udp=(UdpFeedConfig(name="tcp", port=0),))
    with pytest.raises(ConfigError, match=r"feed\.udp\[0\]\.name"):
        await feeds.start(config, lambda batch: None, Metrics())
    assert feeds.server is None


async def test_a_feed_that_cannot_start_closes_the_others() -> None:
    tcp_port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        config = FeedConfig(
            host="127.0.0.1",
            port=tcp_port,
            udp=(UdpFeedConfig(name="udp", host="127.0.0.1", port=taken.getsockname()[1]),),
        )
        feeds = FeedSet()
        metrics = Metrics()
        with pytest.raises(OSError, match="in use"):
            await feeds.start(config, lambda batch: None, metrics)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", tcp_port)
    for source in ("tcp", "udp"):  # no age left growing for feeds that are not running
        assert value(metrics, "aisfusion_feed_last_message_age_seconds", source) is None
    with pytest.raises(RuntimeError):
        _ = feeds.tcp_port


# --- settings ---------------------------------------------------------------------------------


def test_feeds_load_from_toml_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[feed]\nport = 1\n"
        "[[feed.clients]]\nname = 'aishub'\nhost = 'data.example'\nport = 4001\n"
        "[[feed.clients]]\nname = 'coast'\nhost = 'rx.example'\nport = 4002\n"
        "idle_timeout_s = 5.0\nreconnect_max_s = 30.0\n"
        "[[feed.udp]]\nname = 'udp'\nport = 10111\n"
    )
    feed = load(path, environ={"AISFUSION_FEED__PORT": "2"}).feed
    assert feed.port == 2
    assert [(c.name, c.host, c.port) for c in feed.clients] == [
        ("aishub", "data.example", 4001),
        ("coast", "rx.example", 4002),
    ]
    assert feed.clients[0] == TcpClientFeedConfig(name="aishub", host="data.example", port=4001)
    assert (feed.clients[1].idle_timeout_s, feed.clients[1].reconnect_max_s) == (5.0, 30.0)
    assert feed.udp == (UdpFeedConfig(name="udp", port=10111),)
    assert feed.udp[0].host == "0.0.0.0"


def test_bad_feed_settings_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[feed]\nidle_timeout_s = -1\n"
        "[[feed.clients]]\nname = 'a'\nhost = 'h'\nport = 1\n"
        "[[feed.clients]]\nname = 'a'\nhost = 'h'\nport = 2\n"
        "[[feed.udp]]\nname = 'u'\nport = 1\nreconnect_min_s = 1.0\n"
    )
    with pytest.raises(ConfigError) as err:
        load(path, environ={})
    problems = err.value.problems
    assert problems[0].startswith("feed.idle_timeout_s: Expected `float` >= 0")
    assert problems[1].startswith(
        "feed.clients: feed name 'a' is used by more than one client feed"
    )
    assert problems[2].startswith("feed.udp: Object contains unknown field `reconnect_min_s`")
    assert len(problems) == 3


def test_reconnect_bounds_are_cross_checked() -> None:
    with pytest.raises(ConfigError, match=r"reconnect_min_s 9\.0 is larger than reconnect_max_s"):
        load(
            None,
            environ={},
            overrides={
                "feed": {
                    "clients": [
                        {
                            "name": "a",
                            "host": "h",
                            "port": 1,
                            "reconnect_min_s": 9.0,
                            "reconnect_max_s": 2.0,
                        }
                    ]
                }
            },
        )
