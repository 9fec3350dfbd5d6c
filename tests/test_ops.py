"""Operations artefacts, checked with Prometheus' own tool and against a running service.

- `ops/prometheus/alerts.yml`: valid (`promtool check rules`), every alert waits (`for:`), has a
  runbook entry in the README and rule tests where it fires and where it does not
  (`promtool test rules ops/prometheus/alerts_test.yml`).
- The metrics exposition of a real service that has seen traffic passes `promtool check metrics`
  and follows the conventions (one prefix, base units, no MMSI label).
- `ops/grafana/aisfusion.json` is an importable dashboard whose queries are valid PromQL and
  name only metrics the service exposes; so do the alert rules.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pyais.encode import encode_dict

from aisfusion.app import Service
from aisfusion.config import Config
from aisfusion.traffic.nmea_out import tag_block
from tests import promtool
from tests.dbs import fresh_database, unique_name

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "ops" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "ops" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "ops" / "grafana" / "aisfusion.json"
DATA = REPO.parent / "shared" / "data" / "ais"
METRIC = re.compile(r"\baisfusion_[a-z0-9_]+\b")
# The symptoms the alert rules must cover (issue 7).
REQUIRED_ALERTS = {
    "AisfusionFeedSilent",
    "AisfusionIngestStalled",
    "AisfusionEndToEndLatencyHigh",
    "AisfusionBreakerOpen",
    "AisfusionDeadLetterQueueGrowing",
    "AisfusionHistoryWriteLag",
    "AisfusionRedisMemoryHigh",
}


@pytest.fixture(scope="module")
def promtool_bin() -> Path:
    try:
        return promtool.ensure()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"promtool is needed for these tests and could not be installed: {exc}")


def run_promtool(
    binary: Path, *args: str, cwd: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, duration
    return int(match[1]) * units[match[2]]


# -- alert rules -----------------------------------------------------------------------------


def test_alert_rules_are_valid_and_their_rule_tests_pass(promtool_bin: Path) -> None:
    checked = run_promtool(promtool_bin, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = run_promtool(promtool_bin, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_waits_has_a_runbook_and_tests_that_fire_and_stay_quiet() -> None:
    rules = alert_rules()
    names = {rule["alert"] for rule in rules}
    assert names >= REQUIRED_ALERTS
    readme = (REPO / "README.md").read_text()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    evaluations = [case for test in tests for case in test["alert_rule_test"]]
    for rule in rules:
        name = rule["alert"]
        assert seconds(rule["for"]) >= 60, f"{name}: a blip must not alert"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
        # The runbook is a README heading; GitHub's anchor of "#### AisfusionDown" is the
        # lower-cased name.
        assert rule["annotations"]["runbook_url"] == f"README.md#{name.lower()}"
        assert re.search(rf"^#### {name}$", readme, re.M), f"{name}: no runbook in README"
        cases = [c for c in evaluations if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in cases), f"{name}: no test where it fires"
        assert any(not c["exp_alerts"] for c in cases), f"{name}: no test where it stays quiet"


# -- the exposition of a running service -------------------------------------------------------


@pytest.fixture
async def service(servers: Any, tmp_path: Path) -> AsyncIterator[Service]:
    raw = msgspec.to_builtins(Config())
    raw["feed"].update(host="127.0.0.1", port=0, source="ops")
    raw["metrics"]["port"] = 0
    raw["control"]["socket"] = str(tmp_path / "control.sock")
    raw["spool"]["dir"] = str(tmp_path / "spool")
    raw["postgres"]["url"] = await fresh_database(servers.postgres_url)
    raw["redis"].update(url=servers.redis_url, key_prefix=unique_name("ops") + ":")
    raw["batcher"]["flush_interval_s"] = 0.05
    raw["dlq"]["poll_interval_s"] = 0.1
    svc = Service(msgspec.convert(raw, Config))
    await svc.start()
    yield svc
    await svc.stop()


def traffic() -> bytes:
    """A recorded file (with repeated reports: overlap), reports heard by two stations with
    tag-block times (clock skew), a report from the future (a vessel reject) and garbage
    (feed rejects)."""
    now = time.time()
    lines = []
    for i in range(20):
        fields = {
            "type": 1,
            "mmsi": 257_100_000 + i,
            "lat": 59.9,
            "lon": 10.7,
            "speed": 3.0,
            "second": int(now) % 60,  # agrees with the tag-block time: no clock error
        }
        (sentence,) = encode_dict(fields, talker_id="AI", sentence_type="VDM")
        lines.append(tag_block(sentence, station="rx-a", t=now))
        lines.append(tag_block(sentence, station="rx-b", t=now + 1))
    (future,) = encode_dict(
        {"type": 1, "mmsi": 257_199_999, "lat": 59.0, "lon": 10.0}, talker_id="AI"
    )
    lines.append(tag_block(future, station="rx-a", t=now + 86_400))
    lines.append("this is not NMEA")
    lines.append("!AIVDM,1,1,,A,13HOI:0P0000VOHLCnHQKwvL05Ip,0*00")  # bad checksum
    return (DATA / "gfw-tools-mixed_types.nmea").read_bytes() + "\n".join(lines).encode() + b"\n"


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


async def scrape_after_traffic(service: Service) -> str:
    data = traffic()
    _, writer = await asyncio.open_connection("127.0.0.1", service.feed_port)
    writer.write(data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    registry = service.metrics.registry
    deadline = time.monotonic() + 30
    while (registry.get_sample_value("aisfusion_feed_lines_total", {"source": "ops"}) or 0) < (
        data.count(b"\n")
    ):
        assert time.monotonic() < deadline, "the service did not read the traffic"
        await asyncio.sleep(0.05)
    assert await service.drain(30)
    await asyncio.sleep(0.3)  # a DLQ poll tick sets the dead-letter gauges
    return await asyncio.to_thread(get, f"http://127.0.0.1:{service.metrics_port}/metrics")


def exposed_names(exposition: str) -> set[str]:
    """Every name a query may use: declared families and their samples' names."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        names.add(name)
        if kind in ("histogram", "summary"):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    names |= {m[0] for m in re.findall(r"^([a-z_:][a-z0-9_:]*)(\{|\s)", exposition, re.M)}
    return names


async def test_exposition_passes_promtool_and_has_every_queried_metric(
    service: Service, promtool_bin: Path
) -> None:
    exposition = await scrape_after_traffic(service)

    checked = run_promtool(promtool_bin, "check", "metrics", stdin=exposition)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr

    families = list(text_string_to_metric_families(exposition))
    for family in families:
        assert family.name.startswith("aisfusion_"), family.name
        for sample in family.samples:
            assert "mmsi" not in sample.labels, sample
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), f"{family.name}: histograms are durations"
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    # What the traffic must have produced, so the dashboard shows something real.
    for name, labels in [
        ("aisfusion_feed_rejected_total", {"source": "ops", "reason": "bad_checksum"}),
        ("aisfusion_vessel_rejected_total", {"reason": "future_time"}),
        ("aisfusion_end_to_end_latency_seconds_count", {"store": "redis"}),
        ("aisfusion_end_to_end_latency_seconds_count", {"store": "postgres"}),
        ("aisfusion_source_quality", {"source": "ops/rx-a"}),
        ("aisfusion_feed_overlap_total", {"source": "ops", "other": "ops"}),
    ]:
        value = values.get((name, tuple(sorted(labels.items()))))
        assert value is not None and value > 0, (
            name,
            labels,
            sorted(k for k in values if k[0] == name),
        )
    assert values[("aisfusion_ready", ())] == 1.0
    assert values[("aisfusion_redis_memory_used_bytes", ())] > 0

    names = exposed_names(exposition)
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {m for expr in dashboard_exprs(dashboard) for m in METRIC.findall(expr)}
    assert queried, "the dashboard queries no aisfusion metric"
    assert not queried - names, f"dashboard queries metrics not exposed: {queried - names}"
    in_rules = {m for rule in alert_rules() for m in METRIC.findall(rule["expr"])}
    assert not in_rules - names, f"alert rules use metrics not exposed: {in_rules - names}"


# -- the dashboard -----------------------------------------------------------------------------


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])
    return panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", [])]


def test_dashboard_is_importable_and_its_queries_are_valid_promql(
    promtool_bin: Path, tmp_path: Path
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["id"] is None  # importable into any Grafana: it gets its own id
    assert dashboard["uid"] == "aisfusion"
    assert dashboard["title"] and dashboard["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]

    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "latency", "rejects", "source quality", "breakers",
                  "dead-letter", "live vessel"):  # fmt: skip
        assert topic in titles, f"no panel about {topic}"

    # promtool has no "check expression": wrap each query in a recording rule and check those.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
                    for i, expr in enumerate(dashboard_exprs(dashboard))
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = run_promtool(promtool_bin, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def grafana_to_promql(expr: str) -> str:
    """Grafana's template variables replaced by what they expand to."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


# -- the bulk histogram the writers use ----------------------------------------------------------


def test_bulk_histogram_counts_like_prometheus_client() -> None:
    """`observe_many` over a batch exposes what one `Histogram.observe` per value would."""
    from prometheus_client import CollectorRegistry, Histogram

    from aisfusion.metrics import BulkHistogram

    buckets = (0.1, 1.0, 5.0)
    values = [0.0, 0.05, 0.1, 0.10001, 1.0, 4.9, 5.0, 7.5, 100.0]
    bulk_registry, plain_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram("t_seconds", "test", "store", buckets, ("a",), bulk_registry)
    plain = Histogram("t_seconds", "test", ["store"], buckets=buckets, registry=plain_registry)
    bulk.observe_many("a", values[:4])
    bulk.observe_many("a", values[4:])
    for value in values:
        plain.labels("a").observe(value)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(bulk_registry) == samples(plain_registry)
    untouched = {s.name: s.value for f in bulk_registry.collect() for s in f.samples}
    assert untouched["t_seconds_count"] == len(values)
