"""The whole pipeline under the real launcher, for tests that start it: a config of real stages on free
ports, the launcher process and the events it publishes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import yaml
import zmq

from classifier.settings import SHIPPED_MODEL
from support import PYTHON, REPO, free_port, free_port_range


class Pipeline:
    def __init__(self, config: dict, tmp_path: Path, extra_args: list[str] | None = None) -> None:
        self.config_path = tmp_path / "pipeline.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / "launcher.log"
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "deploy", "run", "--config", str(self.config_path), *(extra_args or [])],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.events_endpoint = config["sink"]["publish"]
        self.metrics_base = config["metrics"]["base_port"]

    def log_text(self) -> str:
        return self.log_path.read_text()

    def pid_of(self, stage: str) -> int:
        pids = re.findall(rf"started {re.escape(stage)} \(pid (\d+)\)", self.log_text())
        return int(pids[-1])

    def collect(self, seconds: float, predicate=None, types: tuple[str, ...] = ("faces",)) -> list[dict]:
        """Events of ``types`` from the sink for up to ``seconds``, or until ``predicate(events)``."""
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.events_endpoint)
        events: list[dict] = []
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if sub.poll(200):
                    event = json.loads(sub.recv_multipart()[1])
                    if event["type"] not in types:
                        continue
                    events.append(event)
                    if predicate and predicate(events):
                        break
        finally:
            sub.close()
        return events

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.log.close()


def pipeline_config(cameras: list[dict], tmp_path: Path, **sections) -> dict:
    net_base = free_port_range(50 + len(cameras) + 1)
    assert SHIPPED_MODEL.exists(), f"the shipped model {SHIPPED_MODEL} is part of the repository"
    config = {
        "cameras": cameras,
        "detector": {"workers": 1, "backend": "haar", "min_face": 40},
        "classifier": {"model": str(SHIPPED_MODEL), "max_batch": 32, "max_wait_ms": 10, "device": "cpu"},
        "sink": {"publish": f"tcp://127.0.0.1:{free_port()}", "jsonl": str(tmp_path / "events.jsonl")},
        "network": {"base_port": net_base},
        "metrics": {"base_port": free_port_range(100 + len(cameras) + 1)},
        "supervisor": {"restart_backoff_s": 0.2, "status_interval_s": 2},
        "control": {"port": free_port()},  # the default 8070 may be another launcher's
    }
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    return config
