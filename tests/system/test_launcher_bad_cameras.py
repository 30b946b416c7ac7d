"""Broken cameras under the launcher: one broken camera must not stop the others, each is reported once and
not restarted, and when every camera failed for good the launcher stops with status 1.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
import zmq

from support import (
    PYTHON,
    REPO,
    metric_samples,
    overwrite,
    sample,
    shared_path,
    wait_for,
)
from support.pipeline import pipeline_config

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces_mp4() -> bytes:
    return shared_path("media", "faces.mp4").read_bytes()


# ------------------------------------------------------------------------------------------------
# the launcher with broken cameras
# ------------------------------------------------------------------------------------------------

RUN_S = 30  # the launcher's --duration: it stops by itself, the test reads its exit code


@pytest.mark.timeout(180)
def test_launcher_keeps_the_good_camera_running_and_reports_each_broken_camera_once_without_restarting_it(
    faces_mp4: bytes, tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(faces_mp4[:4096])
    garbled = tmp_path / "garbled-index.mp4"
    garbled.write_bytes(overwrite(faces_mp4, 40, 4000, seed=1))
    cameras = [
        {"id": "truncated", "source": str(truncated)},  # a finite file: restarted only on failure
        {"id": "garbled", "source": str(garbled), "loop": True},  # looping: restarted always, unless fatal
        {"id": "good", "source": "demo", "fps": 5},
    ]
    config = pipeline_config(cameras, tmp_path)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "launcher.log"
    with log_path.open("w") as log:
        launcher = subprocess.Popen(
            [PYTHON, "-m", "deploy", "run", "--config", str(config_path), "--duration", str(RUN_S)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    processes.append(launcher)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(config["sink"]["publish"])
    fatal = [
        f"capture-{c} exited with a fatal error (exit code 2); not restarting it" for c in ("truncated", "garbled")
    ]
    failed_at: float | None = None
    launcher_samples: dict = {}
    events: list[dict] = []
    try:
        while launcher.poll() is None:
            if sub.poll(200):
                events.append(json.loads(sub.recv_multipart()[1]))
            if failed_at is None and all(line in log_path.read_text() for line in fatal):
                failed_at = time.time()
            if failed_at is not None and not launcher_samples:
                # Both cameras are down for good: the launcher still runs and exports what happened.
                launcher_samples = wait_for(lambda: metric_samples(config["metrics"]["base_port"]), what="launcher")
    finally:
        sub.close()
    text = log_path.read_text()
    assert launcher.returncode == 0, text[-3000:]
    assert f"duration of {RUN_S}s reached, stopping" in text, "the launcher ran to its end, not died early"
    assert failed_at is not None, text[-3000:]

    # Each broken camera: its own error names the file, the launcher reports it once and never restarts it.
    assert f"camera truncated: video file '{truncated}' yields no frames" in text
    assert f"camera garbled: OpenCV cannot open file source '{garbled}'" in text
    for camera in ("truncated", "garbled"):
        assert len(re.findall(rf"started capture-{camera} \(pid \d+\)", text)) == 1, f"capture-{camera} restarted"
        assert text.count(f"capture-{camera} exited with a fatal error") == 1
        assert sample(launcher_samples, "emostream_stage_restarts_total", stage=f"capture-{camera}") == 0.0
        assert sample(launcher_samples, "emostream_stage_up", stage=f"capture-{camera}") == 0.0
    assert sample(launcher_samples, "emostream_stage_up", stage="capture-good") == 1.0
    assert "Traceback" not in text

    # The good camera's events kept arriving after both broken cameras were gone; theirs never did (a
    # camera status event saying "down" would be fine).
    faces = [e for e in events if e["type"] == "faces"]
    after = [e for e in faces if e["ts_capture"] > failed_at]
    assert len(after) >= 5, f"{len(after)} events from the good camera after the failures\n{text[-3000:]}"
    assert {e["camera"] for e in faces} == {"good"}
    assert all(e.get("status") == "down" for e in events if e["camera"] != "good")


def test_launcher_stops_with_status_1_when_every_camera_failed_for_good(
    faces_mp4: bytes, tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    garbled = tmp_path / "garbled-index.mp4"
    garbled.write_bytes(overwrite(faces_mp4, 40, 4000, seed=1))
    # Looping, so only the fatal exit can end it: nothing is left to deliver frames.
    config = pipeline_config([{"id": "garbled", "source": str(garbled), "loop": True}], tmp_path)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    launcher = subprocess.run(
        [PYTHON, "-m", "deploy", "run", "--config", str(config_path), "--duration", "600"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launcher.returncode == 1, launcher.stdout[-3000:] + launcher.stderr[-3000:]
    assert "every camera failed for good (capture-garbled); stopping" in launcher.stdout + launcher.stderr
