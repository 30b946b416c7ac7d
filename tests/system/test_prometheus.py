"""A real Prometheus scraping a real pipeline (one demo camera, one camera whose URL nothing serves).

Every dashboard query, recording rule and alert expression must evaluate and return data, the dead
camera must make the camera-down and frames-dropped alerts fire, and every stage must answer /healthz
and /readyz. Needs the `prometheus` and `promtool` binaries (Debian package `prometheus`; .ci/run
installs it) and skips with that reason without them.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from deploy.config import parse_config
from deploy.plan import metrics_ports
from support import free_port, free_ports, http_get, wait_for
from support.observability import (
    DASHBOARD,
    PROM_CONFIG,
    PROM_DIR,
    PROMETHEUS,
    PROMTOOL,
    dashboard_queries,
    needs_prometheus,
    rules_of,
)
from support.pipeline import Pipeline, pipeline_config

#: Alerts the dead camera (and the detector replica nothing serves) must make fire.
FIRING_IN_TEST = {"EmostreamCameraDown", "EmostreamFramesDropped", "EmostreamTargetDown"}
DEADLINE_S = 60.0  # generous: the classifier loads torch and the first scrape comes 5-6 s after start
COMPARISON = re.compile(r"^(?P<data>.*?)\s*(==|!=|>=|<=|>|<)\s*[-+0-9.eE]+\s*$", re.DOTALL)


# -- a real Prometheus scraping a real pipeline ------------------------------------------------------


class Prometheus:
    def __init__(self, config: dict, workdir: Path, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=5) as resp:
            return resp.status == 200

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as exc:  # a bad query answers 400/422 with a JSON error
            return json.load(exc)

    def query(self, expr: str) -> list[dict]:
        """The instant vector of ``expr``; fails the test at once if Prometheus cannot evaluate it."""
        body = self.api("query", query=expr)
        assert body["status"] == "success", f"{expr!r} does not evaluate: {body.get('error')}"
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def job_of(process: str) -> str:
    """The committed scrape job that covers a launcher process name (capture-cam0 -> capture)."""
    return process.split("-")[0]


def scrape_config_for(pipeline: dict, workdir: Path, prometheus_port: int, missing_port: int) -> dict:
    """The committed prometheus.yml with static 127.0.0.1 targets from the pipeline's metrics ports."""
    committed = yaml.safe_load(PROM_CONFIG.read_text())
    targets: dict[str, list[str]] = {"prometheus": [f"127.0.0.1:{prometheus_port}"]}
    for process, port in metrics_ports(parse_config(pipeline)).items():
        targets.setdefault(job_of(process), []).append(f"127.0.0.1:{port}")
    # A detector replica that nothing serves, like a dead container: EmostreamTargetDown must fire.
    targets["detector"].append(f"127.0.0.1:{missing_port}")
    assert {job["job_name"] for job in committed["scrape_configs"]} <= set(targets), "a committed job is untested"
    # Same global settings and rule files, scraped and evaluated every second for a short test.
    settings = {**committed["global"], "scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    for name in committed["rule_files"]:
        groups = yaml.safe_load((PROM_DIR / name).read_text())
        for group in groups["groups"]:
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = "1s"  # a `for:` of 30s-2m would outlast the test
        (workdir / name).write_text(yaml.safe_dump(groups, sort_keys=False))
    return {
        "global": settings,
        "rule_files": committed["rule_files"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in sorted(targets.items())
        ],
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A pipeline (demo camera + dead URL camera) under the launcher, scraped by a real Prometheus."""
    if not (PROMETHEUS and PROMTOOL):
        pytest.skip(needs_prometheus.kwargs["reason"])
    tmp = tmp_path_factory.mktemp("observability")
    dead_url = f"http://127.0.0.1:{free_port()}/x.mjpg"
    cameras = [{"id": "demo", "source": "demo", "fps": 10}, {"id": "dead", "source": dead_url}]
    config = pipeline_config(cameras, tmp)
    # Prometheus' port and a port nothing serves, outside every range the pipeline binds.
    taken = set(metrics_ports(parse_config(config)).values())
    taken |= set(range(config["network"]["base_port"], config["network"]["base_port"] + 50 + len(cameras)))
    prom_port, missing_port = next(ports for ports in iter(lambda: free_ports(2), None) if not taken & set(ports))
    pipe = Pipeline(config, tmp)
    prom_dir = tmp / "prometheus"
    prom_dir.mkdir()
    prom = None
    try:
        prom = Prometheus(scrape_config_for(config, prom_dir, prom_port, missing_port), prom_dir, prom_port)
        wait_for(prom.ready, timeout=DEADLINE_S, interval=0.2, what=f"prometheus on {prom.url} ready")
        yield {
            "pipe": pipe,
            "prom": prom,
            "config": config,
            "missing_port": missing_port,
            "deadline": time.monotonic() + DEADLINE_S,
        }
    finally:
        if prom is not None:
            prom.stop()
        pipe.stop()


def wait_for_data(live: dict, queries: dict[str, str]) -> dict[str, list[dict]]:
    """Poll until every query returns at least one sample that is not NaN; report all that never did."""
    prom: Prometheus = live["prom"]
    pending, results = dict(queries), {}
    while True:
        for name, expr in list(pending.items()):
            result = prom.query(expr)
            if any(not math.isnan(float(sample["value"][1])) for sample in result):
                results[name] = result
                del pending[name]
        if not pending or time.monotonic() > live["deadline"]:
            break
        time.sleep(0.5)
    assert not pending, (
        "no data from:\n"
        + "\n".join(f"  {name}: {expr}" for name, expr in pending.items())
        + (
            f"\nlauncher log tail:\n{live['pipe'].log_text()[-2000:]}\nprometheus log tail:\n"
            f"{live['prom'].log_path.read_text()[-2000:]}"
        )
    )
    return results


@needs_prometheus
def test_every_stage_answers_healthz_and_readyz(live):
    ports = metrics_ports(parse_config(live["config"]))

    while True:
        answers = {
            (name, path): http_get(port, path)[0] for name, port in ports.items() for path in ("/healthz", "/readyz")
        }
        # Whether a camera that cannot open its source is "ready" is the stage's call: 200 or 503.
        not_yet = {
            key: code
            for key, code in answers.items()
            if code != 200 and not (key == ("capture-dead", "/readyz") and code == 503)
        }
        if not not_yet or time.monotonic() > live["deadline"]:
            break
        time.sleep(0.5)
    assert not not_yet, f"health endpoints not answering 200: {not_yet}"


@needs_prometheus
def test_every_dashboard_query_returns_data(live):
    wait_for_data(live, dashboard_queries())
    # The camera variable, label_values(emostream_frames_total, camera), offers both cameras.
    (variable,) = json.loads(DASHBOARD.read_text())["templating"]["list"]
    metric, label = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variable["query"]).groups()
    values = live["prom"].api(f"label/{label}/values", **{"match[]": metric})["data"]
    assert {"demo", "dead"} <= set(values), values


@needs_prometheus
def test_every_recording_rule_evaluates_and_returns_data(live):
    rules = rules_of("record")
    wait_for_data(live, {f"rule {r['record']}": r["expr"] for r in rules})
    # The recorded series themselves, written back by Prometheus' rule evaluation.
    wait_for_data(live, {f"recorded {r['record']}": r["record"] for r in rules})


@needs_prometheus
def test_every_alert_expression_evaluates_and_the_dead_camera_fires_camera_down_and_drops(live):
    prom: Prometheus = live["prom"]
    firing_exprs, quiet_exprs = {}, {}
    for rule in rules_of("alert"):
        name, expr = rule["alert"], rule["expr"].strip()
        prom.query(expr)  # every full expression evaluates
        if name in FIRING_IN_TEST:
            firing_exprs[name] = expr
        else:
            # Latency over budget, stage down and stage restarting must not fire on a healthy run:
            # their expression without the threshold comparison must still return data.
            match = COMPARISON.match(expr)
            assert match, f"{name}: expected `<expression> <comparison> <threshold>`, got {expr!r}"
            quiet_exprs[name] = match["data"]

    # The dead camera (and the detector replica nothing serves) make their alerts' full expressions
    # return data, and the alerts fire (their `for:` is 1s in the test copy).
    # Other cameras may drop frames too (a loaded machine overloads the demo camera), so wait for the
    # dead camera's own drop series rather than for the first series of any camera.
    waiting = dict(firing_exprs)
    waiting["EmostreamFramesDropped"] = waiting["EmostreamFramesDropped"].replace(
        "emostream:frames_dropped:rate1m", 'emostream:frames_dropped:rate1m{camera="dead",reason="read_error"}'
    )
    assert waiting["EmostreamFramesDropped"] != firing_exprs["EmostreamFramesDropped"], "the rule's series changed"
    results = wait_for_data(live, waiting)
    assert any(s["metric"].get("camera") == "dead" for s in results["EmostreamCameraDown"])
    assert any(
        (s["metric"].get("stage"), s["metric"].get("camera"), s["metric"].get("reason"))
        == ("capture", "dead", "read_error")
        for s in results["EmostreamFramesDropped"]
    )

    def firing() -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for alert in prom.api("alerts")["data"]["alerts"]:
            if alert["state"] == "firing":
                out.setdefault(alert["labels"]["alertname"], []).append(alert["labels"])
        return out

    while True:
        now = firing()
        ok = (
            any(labels.get("camera") == "dead" for labels in now.get("EmostreamCameraDown", []))
            and any(labels.get("reason") == "read_error" for labels in now.get("EmostreamFramesDropped", []))
            and "EmostreamTargetDown" in now
        )
        if ok or time.monotonic() > live["deadline"]:
            break
        time.sleep(0.5)
    assert ok, f"firing alerts: {json.dumps(now, indent=1)}"
    assert not any(labels.get("camera") == "demo" for labels in now.get("EmostreamCameraDown", []))
    missing = f"127.0.0.1:{live['missing_port']}"
    assert any(labels["instance"] == missing for labels in now["EmostreamTargetDown"]), "the missing replica"

    wait_for_data(live, quiet_exprs)
    rules = prom.api("rules")["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in rules for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, f"rules that failed to evaluate: {unhealthy}"
