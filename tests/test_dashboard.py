"""deploy/grafana-dashboard.json asks only for series `/metrics` exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from webapi.metrics import FleetCollector
from workers.broker import RedisQueues

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"


def exported(runtime) -> set[str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(runtime, RedisQueues(runtime.redis, runtime.keys.broker)))
    text = generate_latest(registry).decode()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    # Names by family, not by sample: a family with no series yet (no gateway) still counts.
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, [""])
    }


def test_every_series_the_dashboard_queries_is_exported(runtime):
    panels = json.loads(DASHBOARD.read_text())["panels"]
    wanted = {
        name
        for panel in panels
        for target in panel["targets"]
        for name in re.findall(r"pollctl_[a-z_]+", target["expr"])
    }
    assert wanted, "no queries found"
    assert wanted <= exported(runtime), sorted(wanted - exported(runtime))
