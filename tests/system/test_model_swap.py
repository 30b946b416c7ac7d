"""Models swapped live, with real processes: a classifier process fed faces without a pause while
``python -m deploy model`` swaps its model, refuses bad files and rolls back; and the same commands
against a CURVE-secured pipeline under the launcher, found through its config."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from itertools import groupby
from pathlib import Path

import pytest
import zmq

from classifier.settings import SHIPPED_MODEL
from deploy.model_control import request
from emostream.cpu import cpu_info
from emostream.wire import EMOTIONS, encode_faces
from support import (
    PYTHON,
    REPO,
    faces,
    free_ports,
    metric_samples,
    sample,
    start_stage,
    wait_for,
)
from support.models import FAVOURED, tiny_model_file
from support.pipeline import Pipeline, pipeline_config

FERPLUS = SHIPPED_MODEL.with_name("emotion_ferplus.pt2")
#: How the classifier serves a .pt2 with no int8 file beside it on this CPU: bf16 where it runs in hardware.
TORCH_LABEL = "torch bf16" if cpu_info().native_bf16 else "torch fp32"


def deploy_model(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m deploy model ARGS`` as a user runs it."""
    return subprocess.run(
        [PYTHON, "-m", "deploy", "model", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


class Feeder(threading.Thread):
    """Sends one camera's frames (two faces each) without a pause until stopped; ``sent``: their numbers."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.sent: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        push = zmq.Context.instance().socket(zmq.PUSH)
        push.connect(self.endpoint)
        seq = 0
        while not self.halt.is_set():
            seq += 1
            push.send_multipart(encode_faces(faces("cam", seq, 2)))  # a file's frames: never dropped as stale
            self.sent.append(seq)
            time.sleep(0.01)
        push.close(linger=5000)


class Collector(threading.Thread):
    """Receives every event the classifier pushes; ``events``: (frame, happy score of each face)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.pull = zmq.Context.instance().socket(zmq.PULL)
        self.pull.bind(endpoint)
        self.events: list[tuple[int, list[float]]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            if self.pull.poll(100):
                event = json.loads(self.pull.recv_multipart()[-1])
                if event["camera"] == "cam":
                    self.events.append((event["frame"], [f["scores"][FAVOURED] for f in event["faces"]]))
        self.pull.close(linger=0)

    def wait_for_more(self, count: int) -> None:
        target = len(self.events) + count
        wait_for(lambda: len(self.events) >= target, timeout=60, what=f"{count} more events")


def test_a_classifier_fed_without_pause_swaps_refuses_and_rolls_back_losing_no_frame(tmp_path: Path) -> None:
    first = tiny_model_file(tmp_path / "first.pt2", seed=0)
    second = tiny_model_file(tmp_path / "second.pt2", seed=1, favour=FAVOURED)  # every face "happy"
    not_a_model = tmp_path / "notes.pt2"
    not_a_model.write_text("not a model\n")
    bad = {
        "model_file": not_a_model,
        "class_names": tiny_model_file(tmp_path / "sorted-names.pt2", seed=2, class_names=sorted(EMOTIONS)),
        "not_finite": tiny_model_file(tmp_path / "nan.pt2", seed=3, nan=True),
        "input_size": tiny_model_file(tmp_path / "64px.pt2", seed=4, input_size=(64, 64)),
    }
    pull, push, control, metrics_port = free_ports(4)
    endpoint = f"tcp://127.0.0.1:{control}"
    collector = Collector(f"tcp://127.0.0.1:{push}")
    collector.start()
    classifier = start_stage(
        "classifier", "--pull", f"tcp://127.0.0.1:{pull}", "--push", f"tcp://127.0.0.1:{push}",
        "--model", str(first), "--device", "cpu", "--max-batch", "8", "--max-wait-ms", "10",
        "--control", endpoint, "--metrics-port", str(metrics_port),
    )  # fmt: skip
    feeder = Feeder(f"tcp://127.0.0.1:{pull}")
    try:
        wait_for(lambda: serving_in_metrics(metrics_port) == (str(first), version(first)), 60, what="first model")
        feeder.start()
        collector.wait_for_more(20)

        # A relative path, as a user types it: the CLI sends it absolute.
        swapped = deploy_model("use", os.path.relpath(second, REPO), "--endpoint", endpoint)
        assert swapped.returncode == 0, swapped.stderr
        assert f"serving {second} (version {version(second)}, runtime {TORCH_LABEL})" in swapped.stdout
        collector.wait_for_more(20)

        for reason, path in bad.items():
            reply = request(endpoint, "use", str(path))
            assert reply == {"ok": False, "reason": reason, "error": reply["error"]} and str(path) in reply["error"]
        refused = deploy_model("use", str(bad["not_finite"]), "--endpoint", endpoint)
        assert refused.returncode == 1
        verdict = f"model: refused (not_finite): {bad['not_finite']}: non-finite scores (NaN or inf) for "
        [line] = refused.stderr.strip().splitlines()
        # The canary batch: eight made-up faces after the faces of the last batch served.
        assert (m := re.fullmatch(re.escape(verdict) + r"(\d+) of \1 canary faces", line)) and int(m.group(1)) > 8
        collector.wait_for_more(20)
        shown = request(endpoint, "show")
        assert shown["serving"]["file"] == str(second) and shown["previous"]["file"] == str(first)

        rolled_back = deploy_model("use", "previous", "--endpoint", endpoint)
        assert rolled_back.returncode == 0, rolled_back.stderr
        assert rolled_back.stdout.startswith(f"serving {first} (version {version(first)}")
        collector.wait_for_more(20)
    finally:
        feeder.halt.set()
        feeder.join(10)
    try:
        wait_for(lambda: len(collector.events) >= len(feeder.sent), timeout=60, what="every frame sent")
        samples = metric_samples(metrics_port)
    finally:
        collector.halt.set()
        classifier.terminate()
        _, stderr = classifier.communicate(timeout=30)
    frames = [frame for frame, _ in collector.events]
    assert sorted(frames) == feeder.sent, "every frame sent comes out as one event, none twice"
    assert frames == sorted(frames), "one camera's frames come out in order"
    # Which model scored each frame: the second one gives every face "happy" above 0.9, the first none.
    scored_by = []
    for _, happy in collector.events:
        assert all(h > 0.9 for h in happy) or all(h < 0.5 for h in happy), "one model per frame"
        scored_by.append("second" if happy[0] > 0.9 else "first")
    assert [model for model, _ in groupby(scored_by)] == ["first", "second", "first"], "switched between frames"

    assert serving_in_metrics(metrics_port, samples) == (str(first), version(first)), "rolled back to the first"
    assert sample(samples, "emostream_model_swaps_total") == 2
    for reason in bad:
        assert sample(samples, "emostream_model_swap_refusals_total", reason=reason) == 1 + (reason == "not_finite")
    assert sample(samples, "emostream_model_swap_refusals_total", reason="no_previous") == 0
    assert f"serving {second} (version {version(second)}, runtime {TORCH_LABEL})" in stderr
    assert f"model swap refused (input_size): {bad['input_size']}" in stderr


def serving_in_metrics(port: int, samples: dict | None = None) -> tuple[str, str] | None:
    """``(path, version)`` of ``emostream_model_info`` on a classifier's /metrics."""
    for (name, labels), _ in (samples if samples is not None else metric_samples(port)).items():
        if name == "emostream_model_info":
            found = dict(labels)
            return found["path"], found["version"]
    return None


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_deploy_model_swaps_and_rolls_back_a_secured_pipeline_found_through_its_config(tmp_path, keys_dir) -> None:
    # The keys fixture's folder, relative to the config file.
    config = pipeline_config([{"id": "demo", "source": "demo", "fps": 10}], tmp_path, security={"curve_keys": "keys"})
    base, metrics_base = config["network"]["base_port"], config["metrics"]["base_port"]
    pipeline = Pipeline(config, tmp_path, ["--duration", "240"])
    config_path = pipeline.config_path
    try:
        shown = wait_for(
            lambda: (
                (r := deploy_model("show", "--config", str(config_path), "--json", "--timeout", "5")).returncode == 0
                and json.loads(r.stdout)
            ),
            timeout=120,
            what="the classifier's control endpoint",
        )
        assert shown["serving"]["source"] == str(SHIPPED_MODEL) and shown["previous"] is None

        swapped = deploy_model("use", str(FERPLUS), "--config", str(config_path))
        assert swapped.returncode == 0, swapped.stderr
        assert swapped.stdout.startswith(f"serving {FERPLUS} (version {version(FERPLUS)}, runtime torch")
        assert serving_in_metrics(metrics_base + 2) == (str(FERPLUS), version(FERPLUS))

        # Without the deployment's keys the control endpoint answers nothing.
        stranger = deploy_model("show", "--endpoint", f"127.0.0.1:{base + 49}", "--timeout", "3")
        assert stranger.returncode == 1 and "no answer" in stranger.stderr, stranger.stderr

        rolled_back = deploy_model("use", "previous", "--config", str(config_path), "--json")
        assert rolled_back.returncode == 0, rolled_back.stderr
        reply = json.loads(rolled_back.stdout)
        assert reply["serving"]["source"] == str(SHIPPED_MODEL) and reply["previous"]["file"] == str(FERPLUS)
        assert serving_in_metrics(metrics_base + 2)[1] == shown["serving"]["version"]
        assert "serving " in pipeline.log_text() and pipeline.proc.poll() is None
    finally:
        pipeline.stop()
