"""``python -m deploy bench``'s measurements run for real, on tiny settings: the baseline loop and the
standalone stages on a few frames, and the end-to-end runner on one camera (the real pipeline, its
events and drops). No assertion is about speed (the machine is shared): only the shape of the results,
with the committed JSON's keys.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from classifier.settings import SHIPPED_MODEL
from deploy.baseline import merge_baselines, run_baseline
from deploy.bench import (
    PipelineSpec,
    measure_accurate,
    measure_classifier,
    measure_cpu_steadiness,
    measure_detector,
    measure_int8_peak,
    measure_matmul_peak,
    read_frames,
    run_end_to_end,
)
from emostream.modelfile import load_model, save_model
from support import REPO, shared_path
from training.ensemble import LogitEnsemble

#: The bench's JSON as committed: the key set every result must keep.
DOCUMENTED = json.loads((REPO / "docs" / "bench.json").read_text())


def documented_keys(section: dict) -> list[str]:
    """A documented measurement's keys, less the CPU load the bench attaches after measuring."""
    return [k for k in section if k != "cpu_watch"]


@pytest.fixture(scope="module")
def video():
    return shared_path("media", "faces.mp4")


@pytest.fixture(scope="module")
def yunet():
    return shared_path("models", "face_detection_yunet_2026may.onnx")


def test_baseline_loop_on_a_few_frames_and_slices_merge(video):
    first = run_baseline(video, max_frames=4, chunk=2)
    assert first["frames"] == 4 and len(first["chunk_fps"]) == 2
    assert first["fps"] > 0 and first["mean_fps"] > 0
    assert set(first["seconds_by_part"]) == {"decode", "detect", "crop", "classify"}
    assert sum(first["share_by_part"].values()) == pytest.approx(1.0, abs=0.05)
    assert first["faces"] == round(first["faces_per_frame"] * 4)
    # A time budget ends a slice after its first chunk at the latest.
    last = run_baseline(video, max_frames=50, chunk=2, max_seconds=1e-9)
    assert last["frames"] == 2

    merged = merge_baselines([first, last])
    assert merged["frames"] == 6 and merged["chunks"] == 3
    assert merged["fps"] == pytest.approx(sorted(first["chunk_fps"] + last["chunk_fps"])[1])
    assert merged["faces"] == first["faces"] + last["faces"]
    assert [s["frames"] for s in merged["slices"]] == [4, 2]


def test_standalone_stages_on_a_few_frames(video, yunet, tmp_path):
    decode, frames = read_frames(video, 4, chunk=2)
    assert len(frames) == 4 and decode.fps > 0 and decode.resolution == [1280, 720]
    assert list(decode.to_json()) == documented_keys(DOCUMENTED["stages"]["decode"])

    det, crops, boxes = measure_detector(frames, "yunet", yunet, 0.5, 20, chunk=2)
    assert det.fps > 0 and det.cpu_s_per_frame > 0
    # YuNet's runtime and the aligned crop's cost per face came after docs/bench.json's last run.
    added = {"runtime", "align_ms_per_face", "aligned_faces"}
    documented = documented_keys(DOCUMENTED["stages"]["detector_yunet"])
    assert [k for k in det.to_json() if k not in added or k in documented] == documented
    assert det.runtime == "onnxruntime" and det.aligned_faces == round(det.faces_per_frame * 4)
    assert det.align_ms_per_face is not None and det.align_ms_per_face > 0
    crops = np.concatenate(crops)
    assert crops.shape[1:] == (48, 48) and len(crops) == round(det.faces_per_frame * 4) > 0
    # At interval 2, frames 1 and 3 hold the boxes of frames 0 and 2.
    tracked, _, held = measure_detector(frames, "yunet", yunet, 0.5, 20, chunk=2, interval=2)
    assert tracked.interval == 2
    np.testing.assert_array_equal(held[1], boxes[0])
    np.testing.assert_array_equal(held[3], boxes[2])
    np.testing.assert_array_equal(held[2], boxes[2])

    cls = measure_classifier(crops, max_batch=8, batch1_faces=4, batched_batches=2, sweep=(4,), rounds=2)
    assert cls.batch1_faces_per_s > 0 and cls.batched_faces_per_s > 0
    assert set(cls.faces_per_s_by_batch) == {1, 4, 8}
    assert cls.batched_over_batch1 == pytest.approx(cls.batched_faces_per_s / cls.batch1_faces_per_s)
    assert cls.flops_per_face > 1e6  # a real CNN on 48x48, not a counter that saw nothing
    assert cls.tta_flip_faces_per_s > 0
    assert list(cls.to_json()) == documented_keys(DOCUMENTED["classifier"])
    assert set(cls.to_json()["faces_per_s_by_batch"]) == {"1", "4", "8"}  # JSON keys are strings

    # The accurate operating point beside the default: an ensemble of the shipped model with itself serves
    # the same scores at about half the rate (two forward passes a face).
    ensemble = tmp_path / "emotion_accurate.pt2"
    module, info = load_model(SHIPPED_MODEL)
    save_model(LogitEnsemble([module, load_model(SHIPPED_MODEL)[0]]), info, ensemble)
    accurate = measure_accurate(crops, ensemble, max_batch=8, calls_per_round=2, rounds=3)
    assert accurate.model == str(ensemble) and accurate.default_model == str(SHIPPED_MODEL)
    assert accurate.runtime.startswith("torch") and accurate.rounds == 3  # no int8 file beside the ensemble
    assert accurate.faces_per_s > 0 and accurate.default_faces_per_s > 0
    assert accurate.over_default == pytest.approx(accurate.faces_per_s / accurate.default_faces_per_s)
    assert accurate.flops_per_face == pytest.approx(2 * cls.flops_per_face, rel=0.01)

    peak = measure_matmul_peak(size=256, reps=2, threads=2)
    assert peak.gflops >= peak.median_gflops > 0
    assert list(peak.to_json()) == documented_keys(DOCUMENTED["peak"])
    int8_peak = measure_int8_peak(size=256, reps=2, threads=2)
    assert int8_peak.gflops >= int8_peak.median_gflops > 0 and int8_peak.dtype == "int8"
    assert list(int8_peak.to_json()) == documented_keys(DOCUMENTED["int8_peak"])

    steady = measure_cpu_steadiness(0.5, window_s=0.1)
    assert steady.windows >= 2 and steady.median_ops_per_s > 0 and 0 < steady.slowest <= 1
    assert set(steady.below) == {"90", "80", "70"} and all(0 <= v <= 1 for v in steady.below.values())
    assert list(steady.to_json()) == documented_keys(DOCUMENTED["cpu_steadiness"]["before_runs"])


def test_end_to_end_runner_on_one_camera_reads_events_and_drops(video, yunet):
    spec = PipelineSpec(cameras=1, workers=1, interval=2)
    run = run_end_to_end(video, yunet, spec, warmup_s=1.0, measure_s=3.0, startup_timeout_s=90.0)
    assert run.error is None, run.log_tail
    assert run.drops is not None and run.load is not None
    assert run.window.events > 0 and run.window.events_per_s > 0
    assert all(math.isfinite(v) and v > 0 for v in run.window.latency_ms.values())
    # Every event carries the detector's time: the latency splits into its two parts.
    for part in (run.window.to_detector_ms, run.window.in_classifier_ms):
        assert all(math.isfinite(v) and 0 < v < run.window.latency_ms["p99"] + 1 for v in part.values()), part
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
