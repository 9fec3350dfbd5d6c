"""Settings: the repository's own config.toml, environment overrides, every problem named."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from aisfusion.config import Config, load
from aisfusion.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repository_config_is_valid_and_equals_defaults() -> None:
    assert load(REPO / "config.toml", environ={}) == Config()


def test_repository_config_documents_every_setting() -> None:
    text = (REPO / "config.toml").read_text()
    for section, struct in msgspec.structs.asdict(Config()).items():
        assert f"[{section}]" in text
        for key in msgspec.structs.asdict(struct):
            assert re.search(rf"^{key} = .*# ", text, re.M), f"{section}.{key} undocumented"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[feed]\nport = 1234\n[redis]\nkey_prefix = "a:"\n')
    config = load(
        path,
        environ={"AISFUSION_FEED__PORT": "4321", "AISFUSION_POSTGRES__URL": "postgresql://x/y"},
    )
    assert config.feed.port == 4321
    assert config.redis.key_prefix == "a:"
    assert config.postgres.url == "postgresql://x/y"


def test_cli_overrides_beat_environment() -> None:
    config = load(
        None,
        environ={"AISFUSION_FEED__PORT": "4321"},
        overrides={"feed": {"port": 99}},
    )
    assert config.feed.port == 99


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "[feed]\nprot = 1\nport = 70000\n"
        "[actors]\nshards = 0\n"
        "[postgress]\nurl = 'x'\n"
        "[redis]\nkey_prefix = 'has space'\n"
    )
    with pytest.raises(ConfigError) as err:
        load(path, environ={"AISFUSION_BATCHER__MAX_ROWS": "lots"})
    problems = "\n".join(err.value.problems)
    assert "feed.prot: unknown setting (did you mean 'port'?)" in problems
    assert "feed.port: Expected `int` <= 65535" in problems
    assert "actors.shards: Expected `int` >= 1" in problems
    assert "[postgress]: unknown section (did you mean 'postgres'?)" in problems
    assert "redis.key_prefix" in problems
    assert "batcher.max_rows" in problems and "'lots'" in problems
    assert len(err.value.problems) == 6


def test_pool_bounds_are_cross_checked() -> None:
    with pytest.raises(ConfigError, match=r"postgres\.pool_min"):
        load(
            None, environ={"AISFUSION_POSTGRES__POOL_MIN": "5", "AISFUSION_POSTGRES__POOL_MAX": "2"}
        )


def test_missing_file_and_bad_toml_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[feed\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad, environ={})


def test_malformed_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="AISFUSION_FEEDPORT"):
        load(None, environ={"AISFUSION_FEEDPORT": "1"})
