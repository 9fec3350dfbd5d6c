"""Settings: a msgspec Struct tree loaded from TOML, with environment overrides.

Precedence is CLI > environment > file > default. Environment variables are named
``AISFUSION_<SECTION>__<KEY>`` (``AISFUSION_POSTGRES__URL=postgresql://…``). Every problem is
reported at once, each with its dotted path, and unknown keys get a "did you mean" hint.
The repository's ``config.toml`` documents every setting; a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from aisfusion.errors import ConfigError

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


FeedName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class TcpClientFeedConfig(_Section, frozen=True):
    """A feed host aisfusion connects out to (``[[feed.clients]]``)."""

    name: FeedName
    host: Annotated[str, msgspec.Meta(min_length=1)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    idle_timeout_s: PositiveFloat = 60.0
    connect_timeout_s: PositiveFloat = 10.0
    reconnect_min_s: PositiveFloat = 1.0
    reconnect_max_s: PositiveFloat = 60.0

    def __post_init__(self) -> None:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"feed client {self.name!r}: reconnect_min_s {self.reconnect_min_s} is larger "
                f"than reconnect_max_s {self.reconnect_max_s}"
            )


class UdpFeedConfig(_Section, frozen=True):
    """A UDP port receivers send datagrams of NMEA lines to (``[[feed.udp]]``)."""

    name: FeedName
    port: Port
    host: str = "0.0.0.0"  # noqa: S104 - receivers send from other machines
    max_peers: PositiveInt = 1024


def _unique_names(kind: str, feeds: tuple[TcpClientFeedConfig | UdpFeedConfig, ...]) -> None:
    names = [f.name for f in feeds]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"feed name {name!r} is used by more than one {kind} feed")


class FeedConfig(_Section, frozen=True):
    host: str = "0.0.0.0"  # noqa: S104 - receivers connect from other machines
    port: Port = 10110
    source: FeedName = "tcp"
    max_line_bytes: Annotated[int, msgspec.Meta(ge=82, le=65536)] = 1024
    fragment_timeout_s: PositiveFloat = 10.0
    max_connections: PositiveInt = 256
    # 0 disables; a connection that sends no complete line for this long is closed.
    idle_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 600.0
    clients: tuple[TcpClientFeedConfig, ...] = ()
    udp: tuple[UdpFeedConfig, ...] = ()

    def __post_init__(self) -> None:
        # Names across kinds (and against `source`) are checked by feeds.manager: the loader
        # validates one key at a time, so a check here may only look at one field.
        _unique_names("client", self.clients)
        _unique_names("udp", self.udp)


class ActorsConfig(_Section, frozen=True):
    shards: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    dedup_window_s: PositiveFloat = 5.0
    window_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    max_future_skew_s: PositiveFloat = 60.0
    max_lateness_s: PositiveFloat = 3600.0
    max_vessels: Annotated[int, msgspec.Meta(ge=1)] = 200_000
    passivate_min_s: PositiveFloat = 120.0
    passivate_intervals: PositiveFloat = 3.0


Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]


class FusionConfig(_Section, frozen=True):
    """How a vessel actor gates, scores and decides positions (see actors/fusion.py)."""

    ship_max_speed_kn: PositiveFloat = 50.0
    hsc_max_speed_kn: PositiveFloat = 70.0
    sar_max_speed_kn: Annotated[float, msgspec.Meta(ge=102.2)] = 450.0
    jump_allowance_m: Annotated[float, msgspec.Meta(ge=0.0)] = 250.0
    track_timeout_s: PositiveFloat = 60.0
    freshness_s: PositiveFloat = 30.0
    corroboration_bonus: Annotated[float, msgspec.Meta(ge=0.0, le=10.0)] = 0.05
    agree_m: PositiveFloat = 100.0
    agree_horizon_s: PositiveFloat = 120.0
    clock_tolerance_s: Annotated[float, msgspec.Meta(ge=0.0, le=30.0)] = 2.0
    quarantine_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4


class SourcesConfig(_Section, frozen=True):
    """Per-source quality (see actors/sources.py). A source is a feed, or one station of a
    feed when its messages carry a tag-block ``s:``."""

    default_weight: Annotated[float, msgspec.Meta(ge=0.0, le=10.0)] = 1.0
    weights: dict[str, Annotated[float, msgspec.Meta(ge=0.0, le=10.0)]] = msgspec.field(
        default_factory=dict
    )
    initial_quality: Fraction = 0.8
    ewma_alpha: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.05
    demote_below: Fraction = 0.6
    promote_above: Fraction = 0.8
    demoted_factor: Fraction = 0.1
    min_outcomes: Annotated[int, msgspec.Meta(ge=1)] = 20
    publish_interval_s: PositiveFloat = 1.0
    max_sources: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1024


class BatcherConfig(_Section, frozen=True):
    max_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5000
    flush_interval_s: PositiveFloat = 0.5


class PostgresConfig(_Section, frozen=True):
    url: str = ""
    pool_min: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    pool_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 4
    statement_cache_size: Annotated[int, msgspec.Meta(ge=0)] = 100
    command_timeout_s: PositiveFloat = 30.0
    connect_timeout_s: PositiveFloat = 10.0
    max_inactive_connection_lifetime_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    # Behind PgBouncer in transaction pooling mode: no server-side prepared statements are
    # kept (statement_cache_size counts as 0) and nothing relies on session state.
    transaction_pooling: bool = False


class RedisConfig(_Section, frozen=True):
    url: str = ""
    key_prefix: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")] = (
        "aisfusion:"
    )
    # Live records are written as soon as the previous write returned (conflated per vessel
    # meanwhile); this spaces the starts of two writes (0: no spacing).
    flush_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Live record layout: compact (one packed string per vessel, any Redis or Valkey), json
    # (a JSON document; needs the JSON module), auto (json when the server has the module).
    layout: Literal["auto", "compact", "json"] = "auto"
    # A Redis Cluster (also chosen by a redis+cluster:// url).
    cluster: bool = False
    # 0: one geo index key; else the geo index is split into cells of this many degrees
    # (a divisor of 180), so a cluster spreads it over its nodes.
    geo_cell_deg: Annotated[int, msgspec.Meta(ge=0, le=180)] = 0

    def __post_init__(self) -> None:
        if self.geo_cell_deg and 180 % self.geo_cell_deg:
            raise ValueError(f"geo_cell_deg must divide 180 (got {self.geo_cell_deg})")


class RetentionConfig(_Section, frozen=True):
    """History partitions, soft delete of inactive vessels and inactive vessels in the live
    picture (see storage/retention.py)."""

    interval_s: PositiveFloat = 300.0
    partition_days: Annotated[int, msgspec.Meta(ge=1, le=366)] = 1
    partitions_ahead: Annotated[int, msgspec.Meta(ge=1, le=366)] = 3
    history_days: Annotated[int, msgspec.Meta(ge=0)] = 0
    vessel_inactive_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    live_inactive_s: Annotated[float, msgspec.Meta(ge=0)] = 3600.0


class EmbeddedConfig(_Section, frozen=True):
    data_dir: str = ".aisfusion"
    run_as: str = "nobody"
    start_timeout_s: PositiveFloat = 60.0


class MetricsConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 9110
    admin_token: str = ""


class ControlConfig(_Section, frozen=True):
    """The local control socket the `aisfusion shell` talks to (owner-only permissions)."""

    socket: str = ".aisfusion/control.sock"


class LogConfig(_Section, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class SupervisionConfig(_Section, frozen=True):
    strategy: Literal["one_for_one", "one_for_all"] = "one_for_one"
    max_restarts: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 3
    within_s: PositiveFloat = 60.0
    backoff_min_s: PositiveFloat = 0.1
    backoff_max_s: PositiveFloat = 5.0


class BreakerConfig(_Section, frozen=True):
    failure_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 3
    reset_base_s: PositiveFloat = 1.0
    reset_max_s: PositiveFloat = 60.0
    call_timeout_s: PositiveFloat = 10.0


class DlqConfig(_Section, frozen=True):
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    retry_base_s: PositiveFloat = 1.0
    retry_max_s: PositiveFloat = 300.0
    poll_interval_s: PositiveFloat = 1.0
    max_inflight_batches: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 8


class SpoolConfig(_Section, frozen=True):
    dir: Annotated[str, msgspec.Meta(min_length=1)] = ".aisfusion/spool"
    fsync: Literal["always", "batch", "never"] = "always"


class NatsConfig(_Section, frozen=True):
    """The JetStream log between the feeds and the worker processes."""

    url: str = ""  # empty: the embedded nats-server
    stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "AIS_RAW"
    subject_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")] = (
        "ais.raw"
    )
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    retention: Literal["workqueue", "limits"] = "workqueue"
    max_age_s: PositiveFloat = 86400.0
    max_bytes: Annotated[int, msgspec.Meta(ge=1_048_576)] = 4 * 1024**3
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    duplicate_window_s: PositiveFloat = 120.0
    publish_linger_s: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.005
    publish_max_messages: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    max_pending_publishes: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    buffer_max_messages: Annotated[int, msgspec.Meta(ge=1000)] = 2_000_000
    ack_timeout_s: PositiveFloat = 5.0
    connect_timeout_s: PositiveFloat = 5.0


class WorkersConfig(_Section, frozen=True):
    """Who runs the vessels: worker processes on the JetStream log, or this process alone."""

    mode: Literal["jetstream", "in_process"] = "jetstream"
    count: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0  # 0: one per CPU core
    lease_ttl_s: Annotated[float, msgspec.Meta(ge=0.5, le=300)] = 2.0
    renew_interval_s: Annotated[float, msgspec.Meta(gt=0, le=100)] = 0.5
    fetch_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 64
    max_ack_pending: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 2048
    # Lines taken from the log and not yet committed; past it a worker fetches no more until
    # storage catches up, so the log is the buffer (not the DLQ, where a writer that falls
    # behind would otherwise divert batches: work done twice).
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 50_000
    ack_wait_s: PositiveFloat = 60.0


class RuntimeConfig(_Section, frozen=True):
    # Full garbage collections run on this timer instead of CPython's own trigger (heap.py);
    # 0 keeps CPython's policy.
    gc_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    feed: FeedConfig = msgspec.field(default_factory=FeedConfig)
    actors: ActorsConfig = msgspec.field(default_factory=ActorsConfig)
    fusion: FusionConfig = msgspec.field(default_factory=FusionConfig)
    sources: SourcesConfig = msgspec.field(default_factory=SourcesConfig)
    batcher: BatcherConfig = msgspec.field(default_factory=BatcherConfig)
    postgres: PostgresConfig = msgspec.field(default_factory=PostgresConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    embedded: EmbeddedConfig = msgspec.field(default_factory=EmbeddedConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    supervision: SupervisionConfig = msgspec.field(default_factory=SupervisionConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    dlq: DlqConfig = msgspec.field(default_factory=DlqConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    runtime: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    workers: WorkersConfig = msgspec.field(default_factory=WorkersConfig)


_SECTIONS: dict[str, type[_Section]] = {f.name: f.type for f in msgspec.structs.fields(Config)}
ENV_PREFIX = "AISFUSION_"


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    overrides: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        section, sep, key = var[len(ENV_PREFIX) :].lower().partition("__")
        if not sep or not key:
            problems.append(f"{var}: expected {ENV_PREFIX}<SECTION>__<KEY>")
            continue
        overrides.setdefault(section, {})[key] = value
    return overrides, problems


def _merge(base: dict[str, Any], extra: Mapping[str, Mapping[str, Any]]) -> None:
    for section, values in extra.items():
        target = base.setdefault(section, {})
        if isinstance(target, dict):
            target.update(values)


def _validate(raw: Mapping[str, Any], from_env: set[tuple[str, str]]) -> tuple[Config, list[str]]:
    problems: list[str] = []
    sections: dict[str, _Section] = {}
    for section, values in raw.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            problems.append(
                f"[{section}]: unknown section{_did_you_mean(section, list(_SECTIONS))}"
            )
            continue
        if not isinstance(values, Mapping):
            problems.append(f"[{section}]: expected a table of settings")
            continue
        known = list(cls.__struct_fields__)
        good: dict[str, Any] = {}
        for key, value in values.items():
            path = f"{section}.{key}"
            if key not in known:
                problems.append(f"{path}: unknown setting{_did_you_mean(key, known)}")
                continue
            try:
                # Strings from the environment are converted leniently ("10" -> 10).
                msgspec.convert({key: value}, cls, strict=(section, key) not in from_env)
            except msgspec.ValidationError as exc:
                detail = str(exc).split(" - at ")[0]
                problems.append(f"{path}: {detail} (got {value!r})")
                continue
            good[key] = value
        lenient = any(s == section for s, _ in from_env)
        sections[section] = msgspec.convert(good, cls, strict=not lenient)
    config = Config(**sections)  # type: ignore[arg-type]
    if config.postgres.pool_min > config.postgres.pool_max:
        problems.append(
            f"postgres.pool_min: {config.postgres.pool_min} is larger than "
            f"postgres.pool_max {config.postgres.pool_max}"
        )
    if config.workers.renew_interval_s * 2 > config.workers.lease_ttl_s:
        problems.append(
            f"workers.renew_interval_s: {config.workers.renew_interval_s:g} must be at most half "
            f"of workers.lease_ttl_s {config.workers.lease_ttl_s:g}"
        )
    return config, problems


def load(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Load settings from `path` (optional), the environment and CLI `overrides`.

    Raises ConfigError listing every problem.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    env, problems = _env_overrides(os.environ if environ is None else environ)
    from_env = {(s, k) for s, values in env.items() for k in values}
    _merge(raw, env)
    if overrides:
        _merge(raw, overrides)
    config, more = _validate(raw, from_env)
    problems += more
    if problems:
        raise ConfigError(problems)
    return config
