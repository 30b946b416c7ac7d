"""``python -m deploy bench``'s end-to-end runner on one camera, on tiny settings: it starts the real
pipeline, reads its events and counts drops. No assertion is about speed (the machine is shared).
"""

from __future__ import annotations

import json
import math

import pytest

from deploy.bench import (
    PipelineSpec,
    run_end_to_end,
)
from support import REPO, shared_path

#: The bench's JSON as committed: the key set every result must keep.
DOCUMENTED = json.loads((REPO / "docs" / "bench.json").read_text())


@pytest.fixture(scope="module")
def video():
    return shared_path("media", "faces.mp4")


@pytest.fixture(scope="module")
def yunet():
    return shared_path("models", "face_detection_yunet_2026may.onnx")


def test_end_to_end_runner_on_one_camera_reads_events_and_drops(video, yunet):
    spec = PipelineSpec(cameras=1, workers=1, interval=2)
    run = run_end_to_end(video, yunet, spec, warmup_s=1.0, measure_s=3.0, startup_timeout_s=90.0)
    assert run.error is None, run.log_tail
    assert run.drops is not None and run.load is not None
    assert run.window.events > 0 and run.window.events_per_s > 0
    assert all(math.isfinite(v) and v > 0 for v in run.window.latency_ms.values())
    assert set(run.drops.metrics_scraped) == {"launcher", "sink", "classifier", "detector-0", "capture-cam0"}
    assert not run.drops.metrics_errors
    assert run.drops.drop_series > 0, "emostream_frames_dropped_total was not read from /metrics"
    assert isinstance(run.drops.drops_in_window, dict) and isinstance(run.drops.drops_total, list)
    assert {"capture", "detector", "classifier"} <= set(run.load.cpu_cores_by_stage)
    assert run.window.timeline and run.info.launcher_exit_code == 0
    # One worker, interval 2: the detector ran on every other frame, the others were tracked.
    assert run.load.detections_per_frame is not None and 0.45 <= run.load.detections_per_frame <= 0.6
    # The documented JSON of a realtime run, nested sections included.
    doc, documented = run.to_json(), DOCUMENTED["runs"][0]
    assert list(doc) == list(documented)
    for key in ("latency_ms", "sink_latency_ms", "config"):
        assert list(doc[key]) == list(documented[key]), key
    assert list(doc["timeline"][0]) == list(documented["timeline"][0])
    assert list(doc["config"]["detector"]) == list(documented["config"]["detector"])
