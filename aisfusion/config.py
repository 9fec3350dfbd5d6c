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


class FeedConfig(_Section, frozen=True):
    host: str = "0.0.0.0"  # noqa: S104 - receivers connect from other machines
    port: Port = 10110
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "tcp"
    max_line_bytes: Annotated[int, msgspec.Meta(ge=82, le=65536)] = 1024
    fragment_timeout_s: PositiveFloat = 10.0
    max_connections: PositiveInt = 256


class ActorsConfig(_Section, frozen=True):
    shards: Annotated[int, msgspec.Meta(ge=1, le=256)] = 4
    dedup_window_s: PositiveFloat = 5.0
    window_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 16
    max_future_skew_s: PositiveFloat = 60.0
    max_lateness_s: PositiveFloat = 3600.0


class BatcherConfig(_Section, frozen=True):
    max_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5000
    flush_interval_s: PositiveFloat = 0.5


class PostgresConfig(_Section, frozen=True):
    url: str = ""
    pool_min: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1
    pool_max: Annotated[int, msgspec.Meta(ge=1, le=100)] = 4
    statement_cache_size: Annotated[int, msgspec.Meta(ge=0)] = 100
    command_timeout_s: PositiveFloat = 30.0


class RedisConfig(_Section, frozen=True):
    url: str = ""
    key_prefix: Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")] = (
        "aisfusion:"
    )
    flush_interval_s: PositiveFloat = 0.05


class EmbeddedConfig(_Section, frozen=True):
    data_dir: str = ".aisfusion"
    run_as: str = "nobody"
    start_timeout_s: PositiveFloat = 60.0


class MetricsConfig(_Section, frozen=True):
    host: str = "127.0.0.1"
    port: Port = 9110


class LogConfig(_Section, frozen=True):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    feed: FeedConfig = msgspec.field(default_factory=FeedConfig)
    actors: ActorsConfig = msgspec.field(default_factory=ActorsConfig)
    batcher: BatcherConfig = msgspec.field(default_factory=BatcherConfig)
    postgres: PostgresConfig = msgspec.field(default_factory=PostgresConfig)
    redis: RedisConfig = msgspec.field(default_factory=RedisConfig)
    embedded: EmbeddedConfig = msgspec.field(default_factory=EmbeddedConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)


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
