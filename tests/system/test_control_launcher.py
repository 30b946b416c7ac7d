"""Cameras changed while the real launcher runs, over its control API and through ``deploy cameras``:
a camera added publishes events, a removed one stops (its process gone), a bad one changes nothing,
and the other cameras, detector, classifier and sink run on without a restart or a lost frame.
``--persist`` leaves a config that loads with the new camera set. The logic alone: tests/deploy/test_control.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import zmq

from deploy.config import load_config
from emostream.runtime import pid_alive
from support import PYTHON, REPO, metric_samples, sample, wait_for
from support.pipeline import Pipeline, pipeline_config

pytestmark = pytest.mark.system

# Slow enough for a loaded 2-CPU machine; "block" and a long max_age keep every frame, so a gap in a
# camera's frame numbers can only mean a frame lost to the change.
CAMERA = {"source": "demo", "fps": 4, "drop_policy": "block"}


class EventLog(threading.Thread):
    """Every ``faces`` event's (camera, frame) from the sink's PUB socket, in arrival order."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.seen: list[tuple[str, int]] = []
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.endpoint)
        self.ready.set()
        while not self.stop.is_set():
            if sub.poll(100):
                event = json.loads(sub.recv_multipart()[1])
                if event["type"] == "faces":
                    self.seen.append((event["camera"], event["frame"]))
        sub.close()

    def frames(self, camera: str) -> list[int]:
        return [frame for cam, frame in list(self.seen) if cam == camera]


def api(url: str, method: str = "GET", body: object = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "deploy", "cameras", "--url", url, *args],
        cwd=REPO, capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def started(log: str, stage: str) -> list[int]:
    return [int(pid) for pid in re.findall(rf"started {re.escape(stage)} \(pid (\d+)\)", log)]


def test_cameras_added_and_removed_while_the_launcher_runs(tmp_path):
    cameras = [{"id": "a", **CAMERA}, {"id": "b", **CAMERA}]
    # No hang watchdog: on a busy machine the classifier's model load alone can outlast it.
    config = pipeline_config(cameras, tmp_path, classifier={"max_age_ms": 60_000}, supervisor={"hang_timeout_s": 0})
    url = f"http://127.0.0.1:{config['control']['port']}"
    pipeline = Pipeline(config, tmp_path, extra_args=["--persist"])
    events = EventLog(pipeline.events_endpoint)
    events.start()
    events.ready.wait(5)
    try:
        wait_for(lambda: events.frames("a") and events.frames("b"), timeout=300, what="events of a and b")

        # A bad camera: 422 naming the key, and nothing changes.
        status, body = api(f"{url}/cameras", "POST", {"id": "c", "source": "demo", "fps": "fast"})
        assert status == 422 and "cameras[2].fps: Input should be a valid number" in body["error"], body
        assert [c["id"] for c in api(f"{url}/cameras")[1]["cameras"]] == ["a", "b"]

        # Added through the CLI: its capture starts and its events arrive.
        run = cli(url, "add", "--id", "c", "--source", "demo", "--fps", "4", "--set", "drop_policy=block")
        assert run.returncode == 0 and run.stdout == "added c\n", run.stderr
        wait_for(lambda: len(events.frames("c")) >= 3, timeout=180, what="events of the added camera c")

        # Removed over HTTP: its process is gone once the answer comes, its events stop.
        pid_a = started(pipeline.log_text(), "capture-a")[-1]
        status, body = api(f"{url}/cameras/a", "DELETE")
        assert (status, body) == (200, {"removed": "a"})
        assert not pid_alive(pid_a)
        after_removal = len(events.seen)
        wait_for(
            lambda: sum(cam == "b" for cam, _ in events.seen[after_removal:]) >= 8,
            timeout=90,
            what="8 more events of b",
        )
        late = [frame for cam, frame in events.seen[after_removal:] if cam == "a"]
        assert len(late) <= 3, f"a's events go on after its removal: {late}"
        tail = events.seen[after_removal:][-6:]
        assert all(cam != "a" for cam, _ in tail), tail

        listed = cli(url, "list")
        assert listed.returncode == 0, listed.stderr
        assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["b", "c"]
        assert all("\trunning, pid " in line for line in listed.stdout.splitlines()), listed.stdout

        # The model through the same API: what serves, a bad body, a file that is no model (refused, and
        # the model that served keeps serving).
        status, shown = api(f"{url}/model")
        assert status == 200 and shown["ok"] and Path(shown["serving"]["source"]).name == "emotion.pt2", shown
        status, body = api(f"{url}/model", "POST", {"path": "x.pt2"})
        assert status == 400 and '{"file": "PATH"}' in body["error"], body
        not_a_model = tmp_path / "notes.pt2"
        not_a_model.write_text("not a model")
        status, body = api(f"{url}/model", "POST", {"file": str(not_a_model)})
        assert status == 422 and body["error"].startswith("refused ("), body
        assert api(f"{url}/model")[1]["serving"] == shown["serving"]

        # The launcher's own series follow the camera set: no "stage down" for the removed camera.
        samples = metric_samples(config["metrics"]["base_port"])
        assert sample(samples, "emostream_stage_up", stage="capture-c") == 1
        assert sample(samples, "emostream_stage_up", stage="capture-a") is None
    finally:
        code = pipeline.stop()
        events.stop.set()
        events.join(5)
    log = pipeline.log_text()
    assert code == 0, log[-3000:]

    # Nothing else restarted, and b lost no frame through the changes: every frame number, in order.
    for stage in ("sink", "classifier", "detector-0", "capture-b"):
        assert len(started(log, stage)) == 1, f"{stage} restarted\n{log[-3000:]}"
    frames_b = events.frames("b")
    assert frames_b == list(range(frames_b[0], frames_b[0] + len(frames_b))), f"gaps in b: {frames_b}"
    assert re.search(r"worker 0: taking frames from tcp://\S+ too", log), "the detector followed the new camera"

    # --persist: the file on disk loads with the new camera set.
    persisted = load_config(pipeline.config_path)
    assert [c.id for c in persisted.cameras] == ["b", "c"]
    assert persisted.cameras[1].fps == 4 and persisted.cameras[1].drop_policy == "block"
