"""The committed Prometheus config, rules and Grafana dashboard under deploy/, read the way the
observability tests check them, and whether the prometheus and promtool binaries are here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from support import REPO

PROM_DIR = REPO / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERTS_TEST = PROM_DIR / "tests" / "alerts_test.yml"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "emostream.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

needs_prometheus = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL),
    reason="the prometheus and promtool binaries are not on PATH "
    "(apt-get install -y --no-install-recommends prometheus; .ci/run installs them)",
)

#: Grafana's template variables as the dashboard would expand them: all cameras, a 1m rate window.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$camera": ".*"}


def committed_rule_files() -> list[Path]:
    return [PROM_DIR / name for name in yaml.safe_load(PROM_CONFIG.read_text())["rule_files"]]


def rules_of(kind: str) -> list[dict]:
    """Every rule of the committed rule files that has ``kind`` ("record" or "alert")."""
    return [
        rule
        for path in committed_rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' nested panels included."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def dashboard_queries() -> dict[str, str]:
    """Every panel target's PromQL with Grafana's variables substituted, keyed by panel title/refId."""
    queries = {}
    for panel in panels(json.loads(DASHBOARD.read_text())):
        for target in panel.get("targets", []):
            expr = target["expr"]
            # Longest names first, so "$__range" is not eaten by a shorter variable.
            for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
                expr = expr.replace("${" + name[1:] + "}", GRAFANA_VARIABLES[name]).replace(
                    name, GRAFANA_VARIABLES[name]
                )
            assert "$" not in expr, f"panel {panel['title']!r}: unsubstituted variable in {expr!r}"
            queries[f"panel {panel['title']!r} target {target['refId']}"] = expr
    return queries
