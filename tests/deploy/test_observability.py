"""Observability files under deploy/: the Prometheus config, recording rules, alerts and Grafana dashboard.

The scrape config matches the compose topology and the port layout, the dashboard is provisionable,
and promtool checks the committed files and unit-tests every alert on synthetic series. Needs the
`prometheus` and `promtool` binaries for the promtool tests (Debian package `prometheus`; .ci/run
installs it) and skips them with that reason without. A real Prometheus scraping a real pipeline is
tests/system/test_prometheus.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

from deploy.config import parse_config
from deploy.plan import metrics_ports
from support.observability import (
    ALERTS_TEST,
    DASHBOARD,
    GRAFANA_DIR,
    PROM_CONFIG,
    PROM_DIR,
    PROMTOOL,
    committed_rule_files,
    needs_prometheus,
    panels,
    rules_of,
)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


# -- static checks: no binary needed -----------------------------------------------------------------


def test_scrape_config_matches_the_compose_topology_and_the_port_layout():
    config = yaml.safe_load(PROM_CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    static = {name: job["static_configs"][0]["targets"] for name, job in jobs.items() if "static_configs" in job}
    # The compose ports are the launcher's layout at the default metrics.base_port (9100).
    layout = metrics_ports(parse_config({"cameras": [{"id": "cam0", "source": "demo"}]}))
    assert static["sink"] == [f"sink:{layout['sink']}"]
    assert static["classifier"] == [f"classifier:{layout['classifier']}"]
    assert static["capture"] == [f"capture-cam0:{layout['capture-cam0']}"]
    # Scaled detector replicas: one DNS A record each, every one scraped.
    assert jobs["detector"]["dns_sd_configs"] == [
        {"names": ["detector"], "type": "A", "port": layout["detector-0"], "refresh_interval": "15s"}
    ]
    for path in committed_rule_files():
        assert path.exists(), f"rule file {path} named in prometheus.yml is missing"


def test_dashboard_is_a_provisionable_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "emostream" and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, f"panel {panel['title']!r} leaves the 24-column grid"
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), f"panel {panel['title']!r}: targets need unique refIds"
        assert all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"])
    (camera,) = [v for v in dashboard["templating"]["list"] if v["name"] == "camera"]
    assert camera["definition"] == "label_values(emostream_frames_total, camera)"
    assert camera["multi"] and camera["includeAll"] and camera["allValue"] == ".*"

    datasources = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert (source["uid"], source["type"], source["url"]) == ("prometheus", "prometheus", "http://prometheus:9090")
    providers = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "emostream.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# -- promtool ----------------------------------------------------------------------------------------


@needs_prometheus
def test_promtool_accepts_the_config_and_the_rule_files_and_rejects_a_broken_rule(tmp_path):
    copy = tmp_path / "prometheus"
    shutil.copytree(PROM_DIR, copy)
    checked = promtool("check", "config", "prometheus.yml", cwd=copy)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    names = [p.name for p in committed_rule_files()]
    checked = promtool("check", "rules", *names, cwd=copy)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("SUCCESS") == len(names)

    # The check is not vacuous: a syntax error in a copy of an alert is reported.
    broken = yaml.safe_load((copy / "alerts.yml").read_text())
    broken["groups"][0]["rules"][0]["expr"] = "rate(emostream_frames_total[1m]"
    (copy / "alerts.yml").write_text(yaml.safe_dump(broken))
    assert promtool("check", "rules", "alerts.yml", cwd=copy).returncode != 0


@needs_prometheus
def test_promtool_unit_tests_show_every_alert_firing_when_it_should_and_not_otherwise():
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert {rule["alert"] for rule in rules_of("alert")} <= tested, "every alert needs a promtool unit test"
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
