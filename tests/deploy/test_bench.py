"""``python -m deploy bench`` in pieces, on tiny settings: the full command takes minutes.

No assertion here is about speed: this machine is shared, so only the shape of the results and the
arithmetic of the derived ratios are checked. The measurements run for real (the baseline loop,
standalone stages, the end-to-end runner) are tests/system/test_bench_runs.py.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from deploy.__main__ import main as deploy_main
from deploy.baseline import merge_baselines, rate
from deploy.bench import (
    BenchSettings,
    PipelineSpec,
    Record,
    RunInfo,
    RunResult,
    derive,
    format_report,
    interval_study,
    machine_info,
    machine_ticks,
    pipeline_config,
    seq_gaps,
    steadiness,
    window_stats,
    write_json,
    write_plot,
)
from deploy.bench.procstats import watched_cpus
from deploy.bench.report import (
    README_END,
    README_START,
    read_json,
    readme_table,
    speed_after_runs,
    unsteady_probes,
    update_readme,
)
from deploy.bench.settings import used_ports
from deploy.bench.targets import check_targets
from deploy.config import ClassifierConfig
from deploy.plan import endpoints, metrics_ports
from emostream.cpu import SERVING_FLAGS, cpu_info
from emostream.jsonutil import json_ready
from support import REPO, shared_path

#: The bench's JSON as committed: the key set every result must keep.
DOCUMENTED = json.loads((REPO / "docs" / "bench.json").read_text())


@pytest.fixture(scope="module")
def video():
    return shared_path("media", "faces.mp4")


@pytest.fixture(scope="module")
def yunet():
    return shared_path("models", "face_detection_yunet_2026may.onnx")


def test_settings_keep_their_json_keys_and_reach_each_run_through_a_validated_config(video, yunet):
    settings = BenchSettings.quick_settings(workers=3, interval=2)
    assert list(json_ready(settings)) == list(DOCUMENTED["settings"])
    # Stage defaults the bench does not choose come from the stage's config model.
    assert PipelineSpec(cameras=1).max_batch == settings.max_batch == ClassifierConfig().max_batch
    spec = settings.spec(2, "fast", "block", shared_memory=False)
    assert (spec.workers, spec.interval, spec.min_face) == (3, 2, settings.min_face)
    assert spec.label == "2cam-fast-block-socket"

    config, parsed = pipeline_config(video, yunet, spec)
    assert parsed.detector.workers == 3 and parsed.network.shared_memory is False
    assert [c["id"] for c in config["cameras"]] == ["cam0", "cam1"]
    # Every port deploy/plan.py lays out, none twice: 2 internal, the events, the classifier's control,
    # 2 frame ports, 8 /metrics.
    ports = used_ports(parsed)
    assert len(ports) == len(set(ports)) == 14
    assert set(metrics_ports(parsed).values()) <= set(ports)
    assert int(endpoints(parsed).events.rsplit(":", 1)[1]) in ports
    # The replays start spread over the video (faces.mp4: 241 frames at 25 fps), unless asked in step.
    assert [c.start_s for c in parsed.cameras] == [0.0, 4.82]
    in_step = settings.spec(4, "realtime", "drop_oldest", stagger=False)
    assert in_step.label == "4cam-realtime-drop_oldest-in-step"
    assert [c.start_s for c in pipeline_config(video, yunet, in_step)[1].cameras] == [0.0] * 4


def test_rate_is_the_median_over_chunks_and_keeps_the_mean():
    # Chunks of 2 items: 2/0.2 = 10, 2/0.2 = 10, 2/2.0 = 1 per second; a slowed-down chunk is ignored.
    result = rate([1] * 6, [0.1, 0.1, 0.1, 0.1, 1.0, 1.0], chunk=2)
    assert result["per_s"] == pytest.approx(10.0)
    assert result["mean_per_s"] == pytest.approx(6 / 2.4)
    assert result["chunks"] == 3
    # A partial trailing chunk counts only when there is no full one.
    assert rate([1, 1, 1], [0.5, 0.5, 0.1], chunk=2)["per_s"] == pytest.approx(2.0)
    assert rate([1], [0.25], chunk=25)["per_s"] == pytest.approx(4.0)


def test_seq_gaps_count_only_frames_never_delivered():
    # Frame 7 arrived, just not inside the window (a second worker delivered it late): not a gap.
    assert seq_gaps([5, 6, 8, 9], {4, 5, 6, 7, 8, 9, 10}) == 0
    assert seq_gaps([5, 9], {5, 9}) == 3
    assert seq_gaps([], set()) == 0


def test_merged_slices_take_the_median_chunk():
    def slice_(chunks, frames):
        return {
            "chunk_fps": chunks,
            "frames": frames,
            "seconds": frames / 10,
            "faces": frames,
            "seconds_by_part": {"decode": 0.0, "detect": frames / 10, "crop": 0.0, "classify": 0.0},
            "emotions": {"happy": frames},
            "cpu_parallelism": 1.0,
            "fps": chunks[0],
        }

    merged = merge_baselines([slice_([10.0, 12.0], 50), slice_([2.0], 25)])  # the second slice hit a busy minute
    assert merged["fps"] == 10.0
    assert merged["mean_fps"] == pytest.approx(75 / 7.5)
    assert merged["emotions"] == {"happy": 75}


def test_interval_study_counts_the_faces_held_boxes_keep():
    box = np.array([[0, 0, 10, 10]])
    detected = [box, box + [1, 0, 0, 0], box + [20, 20, 0, 0], np.zeros((0, 4))]
    by_n = {row.interval: row for row in interval_study(detected, (1, 2, 4))}
    assert by_n[1].faces_kept == 1.0 and by_n[1].tracked_faces == 0
    # N=2: frame 1 holds frame 0's box (IoU 90/110), frame 3 holds frame 2's box over no face.
    assert by_n[2].faces_kept == 1.0
    assert by_n[2].median_iou == pytest.approx(90 / 110)
    assert by_n[2].held_unmatched == pytest.approx(1 / 2)
    # N=4: frames 1-3 hold frame 0's box: kept on frame 1, lost on frame 2, nothing to find on frame 3.
    assert by_n[4].faces_kept == pytest.approx(1 / 2)
    assert by_n[4].median_iou == pytest.approx(90 / 110 / 2)
    assert by_n[4].held_unmatched == pytest.approx(2 / 3)
    assert by_n[4].detections_per_frame == 0.25
    assert list(by_n[4].to_json()) == list(DOCUMENTED["interval_study"][0])


def _run(cameras, events_per_s, p50, p99, *, pacing="realtime", error=None):
    return {
        "label": f"{cameras}cam",
        "cameras": cameras,
        "pacing": pacing,
        "drop_policy": "block" if pacing == "fast" else "drop_oldest",
        "offered_fps": 25.0 * cameras if pacing == "realtime" else None,
        "events": 0 if error else int(events_per_s * 10),
        "events_per_s": events_per_s,
        "faces_per_frame": 3.0,
        "latency_ms": {"p50": p50, "p95": (p50 + p99) / 2, "p99": p99},
        "sink_latency_ms": {"p50": p50 + 1, "p95": p99, "p99": p99 + 1},
        "drops_in_window": {"capture/overload": 12.0} if cameras == 4 else {},
        "cpu_cores_by_stage": {"capture": 0.2, "detector": 1.2, "classifier": 0.3, "sink": 0.01, "launcher": 0.01},
        "classifier_mean_batch": 9.5,
        "error": error,
    }


FIXED = {
    "machine": {"cpu_count": 2, "cpu_model": "test CPU", "torch": "2.x", "opencv": "4.x"},
    "settings": {"workers": 2, "fast_cameras": 2, "max_batch": 64, "downscale": 0.5, "warmup_s": 5, "measure_s": 10},
    "baseline": {
        "fps": 20.0,
        "frames": 100,
        "faces_per_frame": 1.7,
        "share_by_part": {"detect": 0.8},
        "slices": [
            {"fps": 21.0, "frames": 50, "cpu_watch": {"other_processes_cores": 0.1}},
            {"fps": 19.0, "frames": 50, "cpu_watch": {"other_processes_cores": 0.9}},
        ],
    },
    "stages": {
        "decode": {"fps": 300.0, "cpu_parallelism": 1.5, "cpu_s_per_frame": 0.005},
        "detector_yunet": {
            "fps": 90.0,
            "cpu_parallelism": 1.25,
            "cpu_s_per_frame": 0.02,
            "faces_per_frame": 3.0,
            "downscale": 0.5,
            "align_ms_per_face": 0.125,
        },
    },
    "classifier": {
        "batch1_faces_per_s": 400.0,
        "batched_faces_per_s": 2400.0,
        "faces_per_s_by_batch": {1: 400.0, 64: 2400.0},
        "max_batch": 64,
        "flops_per_face": 0.25e9,
        "cpu_parallelism": 1.8,
        "cpu_s_per_face": 0.0005,
    },
    "peak": {"gflops": 1200.0, "threads": 2},
    "runs": [
        _run(1, 25.0, 40.0, 90.0),
        _run(2, 48.0, 60.0, 150.0),
        _run(4, 44.0, 300.0, 900.0),
        _run(8, 99.0, 1.0, 1.0, error="the launcher exited early with code 1"),
    ],
    "max_throughput": _run(2, 60.0, 500.0, 800.0, pacing="fast"),
    "max_throughput_socket": {**_run(2, 48.0, 600.0, 900.0, pacing="fast"), "shared_memory": False},
    "what_if": {**_run(2, 75.0, 300.0, 400.0, pacing="fast"), "env": {"OMP_NUM_THREADS": "1"}},
}


def test_derived_ratios_table_json_and_plot_on_fixed_results(tmp_path):
    results = json.loads(json.dumps(FIXED))  # a copy, and int keys become strings as after a JSON round trip
    h = derive(results)
    results["headline"] = dataclasses.asdict(h)
    assert h.baseline_fps == 20.0
    # The best realtime run that did not fail: 2 cameras (48/s), not the failed 8-camera one (99/s).
    assert h.end_to_end_fps == 48.0 and h.end_to_end_cameras == 2
    assert h.p99_latency_ms == 150.0
    assert h.end_to_end_over_baseline == pytest.approx(48 / 20)
    assert h.max_throughput_fps == 60.0
    assert h.max_throughput_over_baseline == pytest.approx(3.0)
    assert h.classifier_faces_per_s == 2400.0
    assert h.classifier_batched_over_batch1 == pytest.approx(6.0)
    assert h.classifier_gflops == pytest.approx(600.0)
    assert h.classifier_share_of_peak == pytest.approx(0.5) and h.classifier_peak_dtype == "bfloat16"
    assert h.classifier_batch1_ceiling == pytest.approx(1200 / (400 * 0.25))  # the peak over batch 1's GFLOP/s
    # Capacity = fps x min(processes, cpus / parallelism):
    # decode 300 x min(2, 2/1.5) = 400; detector 90 x min(2, 2/1.25) = 144; classifier 2400/3 x min(1, ..) = 800.
    assert h.stage_capacity_fps == pytest.approx({"decode": 400.0, "detector": 144.0, "classifier": 800.0})
    assert h.slowest_stage == "detector"
    assert h.pipeline_over_slowest_stage == pytest.approx(60 / 144)
    assert h.pipeline_over_slowest_stage_unscaled == pytest.approx(60 / 90)
    # CPU budget: 2 cores / (0.005 + 0.02 + 0.0005 x 3) s per frame.
    assert h.cpu_budget_fps == pytest.approx(2 / 0.0265)
    assert h.pipeline_over_cpu_budget == pytest.approx(60 / (2 / 0.0265))
    assert h.what_if_fps == 75.0 and h.what_if_over_max_throughput == pytest.approx(1.25)
    assert h.socket_fps == 48.0 and h.shared_memory_over_socket == pytest.approx(1.25)

    table = format_report(results)
    for text in (
        "2.40x",
        "6.00x",
        "3.00x",
        "1.25x",
        "0.42",
        "capture/overload 12",
        "FAILED",
        "OMP_NUM_THREADS=1",
        "2 cam fast block socket",
        "during: baseline slice 2 (0.9)",
        "aligned crop, per face",
        "0.125",
    ):
        assert text in table, f"{text!r} missing from\n{table}"
    # Aligned: in the end-to-end table every value of the events/s column ends where its header ends.
    lines = table.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("  run ") and "events/s" in line)
    end = lines[header].index("events/s") + len("events/s")
    assert lines[header + 1][:end].endswith("25.0") and lines[header + 2][:end].endswith("48.0")

    doc = json.loads(write_json(results, tmp_path / "out" / "bench.json").read_text())
    for key in (
        "baseline_fps",
        "end_to_end_fps",
        "p99_latency_ms",
        "classifier_faces_per_s",
        "classifier_batched_over_batch1",
        "pipeline_over_slowest_stage",
    ):
        assert doc[key] == pytest.approx(getattr(h, key)), key
    assert len(doc["runs"]) == 4 and doc["machine"]["cpu_count"] == 2
    # The headline keys come first in the JSON, in the documented order.
    documented = list(DOCUMENTED)
    assert list(doc)[: documented.index("command")] == documented[: documented.index("command")]

    png = write_plot(results, tmp_path / "out" / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_budget_takes_decode_and_the_detector_from_the_all_core_loops_alone_and_with_every_cpu_busy():
    results = json.loads(json.dumps(FIXED))
    plain = derive(results)
    assert plain.cpu_budget_all_cores_fps is None and plain.pipeline_over_all_core_budget is None
    # Without the all-core step: the stage passes (decode 0.005, detector 0.02, classifier 0.0005 x 3 faces).
    assert plain.cpu_budget_fps == pytest.approx(2 / 0.0265)

    def stage(name: str, alone: float, slowdown: float) -> dict:
        return {
            "stage": name,
            "processes": 2,
            "seconds": 6.0,
            "alone_cpu_s_per_frame": alone,
            "all_cores_cpu_s_per_frame": alone * slowdown,
            "by_process": [alone * slowdown] * 2,
            "slowdown": slowdown,
        }

    results["all_cores"] = {"decode": stage("decode", 0.004, 1.2), "detector": stage("detector", 0.016, 1.5)}
    h = derive(results)
    # Alone: 2 cores / (decode 0.004 + detector 0.016 + classifier 0.0015) s per frame.
    assert h.cpu_budget_fps == pytest.approx(2 / 0.0215)
    assert h.cpu_s_per_frame_by_stage == pytest.approx({"decode": 0.004, "detector": 0.016, "classifier": 0.0015})
    assert h.pipeline_over_cpu_budget == pytest.approx(60 / (2 / 0.0215))
    # Every CPU busy: decode 0.004 x 1.2, detector 0.016 x 1.5; the classifier was measured on every CPU already.
    assert h.cpu_budget_all_cores_fps == pytest.approx(2 / (0.0048 + 0.024 + 0.0015))
    assert h.pipeline_over_all_core_budget == pytest.approx(60 / (2 / 0.0303))

    results["headline"] = dataclasses.asdict(h)
    report = format_report(results)
    assert "Every CPU busy" in report and "1.50x" in report and "1.20x" in report
    (budget,) = [t for t in check_targets(results) if "CPU budget" in t.target]
    assert budget.met is (h.pipeline_over_cpu_budget >= 0.85)
    assert budget.measured.startswith(f"{h.pipeline_over_cpu_budget:.2f} (budget")
    assert budget.measured.endswith(f"; {h.pipeline_over_all_core_budget:.2f} with every CPU busy")


def test_a_windows_latency_is_split_at_the_detector_and_events_without_the_stamp_stay_out_of_the_parts():
    records = []
    for i in range(10):
        t = 100.0 + i * 0.05
        detected, classified = t + 0.030, t + 0.050
        if i == 5:  # a frame held up before the classifier
            detected, classified = t + 0.300, t + 0.320
        records.append(Record(classified + 0.001, "c", i, t, None if i == 7 else detected, classified, 1))
    records[7] = records[7]._replace(ts_event=records[7].ts_capture + 0.5)  # from a classifier without ts_detect
    stats = window_stats(records, 100.0, 2.0)
    assert stats.events == 10 and stats.latency_ms["p50"] == pytest.approx(50)
    assert stats.to_detector_ms["p50"] == pytest.approx(30) and stats.in_classifier_ms["p50"] == pytest.approx(20)
    assert stats.to_detector_ms["p99"] > 250 and stats.in_classifier_ms["p99"] == pytest.approx(20)
    (second,) = stats.timeline
    assert second["max_ms"] == pytest.approx(500) and second["events_per_s"] == 10
    assert second["max_to_detector_ms"] == pytest.approx(300) and second["max_in_classifier_ms"] == pytest.approx(20)


def test_steadiness_counts_the_windows_slower_than_each_share_of_the_median():
    rates = [100.0] * 7 + [85.0, 75.0, 50.0]
    steady = steadiness(rates, 0.2)
    assert (steady.windows, steady.median_ops_per_s, steady.slowest) == (10, 100.0, 0.5)
    assert steady.below == {"90": 0.3, "80": 0.2, "70": 0.1}
    assert steadiness([5.0], 0.2).below == {"90": 0.0, "80": 0.0, "70": 0.0}
    with pytest.raises(ValueError):
        steadiness([], 0.2)
    results = fixed_results(MACHINE)
    results["cpu_steadiness"] = {"before_runs": steady.to_json(), "after_runs": steadiness([1.0, 1.0], 0.2).to_json()}
    report = format_report(results)
    assert (
        "before runs: 20% of 0.2 s windows below 80% of the median speed (10% below 70%), the slowest at 50%" in report
    )
    assert "after runs: 0% of 0.2 s windows below 80% of the median speed (0% below 70%), the slowest at 100%" in report
    # After the runs at 1 op/s against 100 before: the machine itself slowed down, and the report says so.
    assert speed_after_runs(results) == pytest.approx(0.01)
    assert "NOTE: after the end-to-end runs the CPU steadiness probe ran at 1% of its speed before them" in report
    # A fifth of the windows before the runs under 80% of the median: the host was unsteady, and the report says so.
    assert unsteady_probes(results) == {"before_runs": pytest.approx(0.2)}
    assert (
        "NOTE: the host was unsteady: windows of the steadiness probe below 80% of its median speed, before runs 20%"
        in report
    )
    results["cpu_steadiness"]["after_runs"] = steadiness([90.0, 95.0], 0.2).to_json()
    assert speed_after_runs(results) == pytest.approx(0.925) and "steadiness probe ran at" not in format_report(results)
    results["cpu_steadiness"]["before_runs"] = steadiness([100.0] * 19 + [75.0], 0.2).to_json()
    assert unsteady_probes(results) == {} and "host was unsteady" not in format_report(results)
    del results["cpu_steadiness"]["after_runs"]
    assert speed_after_runs(results) is None


def test_a_failed_run_keeps_the_old_json_shape_without_stage_numbers():
    window = window_stats([], float("inf"), 3.0)
    info = RunInfo(
        label="1cam-realtime-drop_oldest",
        cameras=1,
        pacing="realtime",
        drop_policy="drop_oldest",
        workers=1,
        interval=1,
        shared_memory=True,
        stagger=True,
        emotion_model=None,
        classify_every_max=None,
        offered_fps=25.0,
        warmup_s=1.0,
        startup_s=None,
        launcher_exit_code=1,
        env={},
        error="the launcher exited early with code 1",
        config={},
    )
    doc = RunResult(window=window, drops=None, load=None, info=info, log_tail="Traceback ...").to_json()
    documented = DOCUMENTED["runs"][0]
    # No /metrics snapshot: the window's and the run's keys, then the launcher's log; NaN latencies as null.
    expected = [k for k in documented if k in {f.name for f in dataclasses.fields(window)}]
    expected += [k for k in documented if k in {f.name for f in dataclasses.fields(info)}]
    assert list(doc) == [*expected, "log_tail"]
    assert doc["events"] == 0 and doc["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert json.loads(json.dumps(doc)) == doc


def test_missing_video_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.mp4"
    assert deploy_main(["bench", "--video", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    no_model = tmp_path / "emotion_accurate.pt2"
    assert deploy_main(["bench", "--quick", "--accurate-model", str(no_model)]) == 2
    assert f"--accurate-model file not found: {no_model}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# the machine, the targets and the README's table
# ------------------------------------------------------------------------------------------------

MACHINE = {
    "cpu_count": 64,
    "usable_cpus": 2,
    "usable_cpus_source": "cgroup v2",
    "cpu_model": "Test CPU 9000",
    "cpu_flags": {flag: flag in ("avx2", "avx512f", "amx_tile") for flag in SERVING_FLAGS},
    "torch": "2.x",
    "opencv": "4.x",
}


def fixed_results(machine: dict | None = None) -> dict:
    results = json.loads(json.dumps(FIXED))
    if machine is not None:
        results["machine"] = machine
    results["headline"] = dataclasses.asdict(derive(results))
    return results


def test_the_report_names_the_cpu_its_flags_and_usable_cpus_and_checks_the_targets():
    report = format_report(fixed_results(MACHINE))
    header = report.splitlines()[0]
    assert "Test CPU 9000, 2 usable CPUs of 64 (source: cgroup v2)" in header
    assert "flags: avx2, avx512f, amx_tile; no avx512_vnni, avx512_bf16, amx_bf16, amx_int8" in header
    targets = report[report.index("Against the targets, on Test CPU 9000") :]
    # FIXED: 2,400 faces/s at 6x batch 1, 4 cameras at 44 of 100 frames/s, 60 / 144 of the slowest stage.
    assert "2,400 faces/s at batch 64, 6.00x batch 1" in targets
    assert "4 cameras: 44.0 events/s, p99 900 ms, 12 frames dropped (counted)" in targets
    assert "0.42 (60.0 against detector 144.0 frames/s)" in targets
    assert "maximum throughput ≥ 10x the study's loop" in targets and "3.00x (60.0 against 20.0 frames/s)" in targets
    assert "pipeline ≥ 0.85 of its CPU budget" in targets and "0.80 (budget 75.5 frames/s)" in targets
    verdicts = [t.verdict for t in check_targets(fixed_results(MACHINE))]
    assert verdicts == ["not met", "not measured"] + ["not met"] * 4 + ["not measured"] * 2
    # The classifier as served against the same model served on torch, both timed whole in the same rounds;
    # the engines side by side (runtimes) are not what this target compares.
    with_torch = fixed_results(MACHINE)
    with_torch["classifier"].update(
        runtime="onnxruntime int8", torch_runtime="torch bf16", torch_faces_per_s=1000.0, torch_threads=2
    )
    with_torch["classifier"]["runtimes"] = [
        {"runtime": runtime, "threads": 2, "faces_per_s_by_batch": {"1": 10.0, "64": rate}}
        for runtime, rate in [("torch bf16", 100.0), ("onnxruntime int8", 250.0)]
    ]
    bf16 = check_targets(with_torch)[1]
    assert bf16.met and bf16.measured == (
        "onnxruntime int8 2,400 against torch bf16 1,000 faces/s, both as served (2 threads): 2.40x"
    )
    with_torch["classifier"]["torch_faces_per_s"] = 1500.0
    assert check_targets(with_torch)[1].met is False
    # The verdict is the default's; the faster setting that keeps int8's near ties is reported beside it.
    with_torch["classifier"]["near_ties_kept_faces_per_s"] = 3300.0
    kept = check_targets(with_torch)[1]
    assert kept.met is False and kept.measured.endswith("both as served (2 threads): 1.60x (near ties kept: 2.20x)")
    report_line = next(line for line in format_report(with_torch).splitlines() if "near ties kept (" in line)
    assert " ".join(report_line.split()) == (
        "classifier as served with int8's near ties kept (rescore_near_ties false), batch 64 3,300.0 faces/s"
    )
    without = fixed_results(MACHINE)
    without["runs"] = without["runs"][:2]
    assert "no realtime run offered 100 frames/s" in format_report(without)


def test_an_int8_classifier_is_held_against_the_int8_peak_which_bounds_its_gain_over_batch_1():
    results = fixed_results(MACHINE)
    results["classifier"]["runtime"] = "openvino int8"
    # Without an int8 peak (older files) there is nothing to hold an int8 model against: the float peak
    # would make it seem to beat the machine.
    h = derive(results)
    assert (
        h.classifier_peak_dtype == "int8" and h.classifier_share_of_peak is None and h.classifier_batch1_ceiling is None
    )
    assert h.int8_peak_gops is None
    # 400 faces/s at batch 1 x 0.25 GFLOP = 100 GOP/s: an int8 peak of 750 caps batching at 7.5x, short of 8x.
    results["int8_peak"] = {
        "gflops": 750.0,
        "median_gflops": 700.0,
        "size": 1024,
        "reps": 8,
        "threads": 2,
        "dtype": "int8",
    }
    h = derive(results)
    assert h.int8_peak_gops == 750.0 and h.float_peak_gflops == 1200.0
    assert h.classifier_share_of_peak == pytest.approx(600 / 750)
    assert h.classifier_batch1_ceiling == pytest.approx(7.5)
    results["headline"] = dataclasses.asdict(h)
    classifier_target = check_targets(results)[0]
    assert not classifier_target.met
    assert classifier_target.measured == (
        "2,400 faces/s at batch 64, 6.00x batch 1 (this CPU's int8 peak allows at most 7.50x)"
    )
    report = format_report(results)
    assert "6.00x (at most 7.50x on this machine: its int8 peak over batch 1's rate)" in report
    assert "80% of this machine's measured int8 matmul peak" in report and "int8 750" in report
    # A peak above 8x batch 1 leaves the target reachable: no bound is quoted.
    results["int8_peak"]["gflops"] = 900.0
    results["headline"] = dataclasses.asdict(derive(results))
    assert check_targets(results)[0].measured == "2,400 faces/s at batch 64, 6.00x batch 1"


ACCURATE = "/models/emotion_accurate.pt2"


def test_the_accurate_model_runs_as_the_classifier_model_and_meets_its_target_only_when_fast_and_real_time(
    video, yunet, tmp_path
):
    model = tmp_path / "emotion_accurate.pt2"
    model.write_bytes(b"the launcher's config checks that the file exists")
    spec = BenchSettings(accurate_model=model).accurate_spec(4)
    assert spec.label == "4cam-realtime-drop_oldest-emotion_accurate"
    config, parsed = pipeline_config(video, yunet, spec)
    assert config["classifier"]["model"] == str(model) and parsed.classifier.model == str(model)
    default = pipeline_config(video, yunet, BenchSettings().spec(4, "realtime", "drop_oldest"))[1].classifier
    assert default.model == ClassifierConfig().model
    # Served as a user would serve it: only the model differs from the default model's run.
    assert parsed.classifier.model_copy(update={"model": default.model}) == default
    with pytest.raises(ValueError, match="no accurate model"):
        BenchSettings().accurate_spec(4)

    results = fixed_results(MACHINE)
    results["accurate_classifier"] = {
        "model": ACCURATE,
        "runtime": "onnxruntime int8",
        "default_model": "emotion.pt2",
        "default_runtime": "onnxruntime int8",
        "max_batch": 64,
        "faces_per_s": 600.0,
        "default_faces_per_s": 1500.0,
        "over_default": 0.4,
    }
    results["accurate_run"] = {**_run(4, 99.8, 60.0, 140.0), "emotion_model": ACCURATE}
    h = derive(results)
    assert (h.accurate_faces_per_s, h.accurate_over_default) == (600.0, 0.4)
    assert (h.accurate_events_per_s, h.accurate_p99_latency_ms) == (99.8, 140.0)
    results["headline"] = dataclasses.asdict(h)
    target = next(t for t in check_targets(results) if t.target.startswith("accurate model"))
    assert target.met is True
    assert target.measured == (
        "emotion_accurate.pt2 on onnxruntime int8: 600 faces/s, 0.40x the default's; "
        "4 cameras: 99.8 events/s, p99 140 ms"
    )
    # The end-to-end target still reads the default model's four-camera run.
    end_to_end = next(t for t in check_targets(results) if "end to end" in t.target)
    assert end_to_end.measured.startswith("4 cameras: 44.0 events/s")
    report = format_report(results)
    for text in ("4 cam realtime emotion_accurate", "accurate emotion_accurate.pt2, onnxruntime int8, batch 64"):
        assert text in report, f"{text!r} missing from\n{report}"

    def verdict(over_default: float, p99: float, error: str | None = None) -> bool | None:
        changed = json.loads(json.dumps(results))
        changed["accurate_classifier"]["over_default"] = over_default
        changed["accurate_run"] = {**_run(4, 99.8, 60.0, p99, error=error), "emotion_model": ACCURATE}
        changed["headline"] = dataclasses.asdict(derive(changed))
        return next(t for t in check_targets(changed) if t.target.startswith("accurate model")).met

    assert verdict(0.29, 140.0) is False  # too slow against the default
    assert verdict(0.4, 151.0) is False  # four cameras, but the tail is late
    assert verdict(0.4, 140.0, error="the launcher exited early with code 1") is False
    # A saved JSON keeps all of it.
    assert derive(json.loads(json.dumps(results))) == h


def test_older_files_without_flags_or_usable_cpus_say_so():
    old = {"cpu_count": 2, "cpu_model": "Old CPU", "amx": ["amx_bf16", "amx_tile"], "torch": "2.x", "opencv": "4.x"}
    header = format_report(fixed_results(old)).splitlines()[0]
    assert "Old CPU, 2 CPUs (usable CPUs not recorded); flags: amx_bf16, amx_tile (other flags not recorded)" in header
    header = format_report(fixed_results({**old, "amx": []})).splitlines()[0]
    assert header.endswith("flags: flags not recorded")


def test_stage_capacity_and_cpu_budget_use_the_usable_cpus_not_the_hosts():
    on_64 = derive(fixed_results({**MACHINE, "usable_cpus": None}))
    on_2 = derive(fixed_results(MACHINE))
    assert on_2.cpu_budget_fps == pytest.approx(2 / 0.0265)
    assert on_64.cpu_budget_fps == pytest.approx(64 / 0.0265)


def test_a_saved_json_renders_the_same_report_and_a_four_camera_run_meets_the_end_to_end_target(tmp_path):
    results = fixed_results(MACHINE)
    results["runs"][2] = _run(4, 99.7, 50.0, 120.0)
    results["headline"] = dataclasses.asdict(derive(results))
    again = read_json(write_json(results, tmp_path / "bench.json"))
    assert format_report(again) == format_report(results)
    end_to_end = next(t for t in check_targets(again) if "end to end" in t.target)
    assert end_to_end.met is True
    assert end_to_end.measured == "4 cameras: 99.7 events/s, p99 120 ms, 12 frames dropped (counted)"


def test_update_readme_rewrites_only_the_marked_block_and_refuses_a_readme_without_it(tmp_path):
    results = fixed_results(MACHINE)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{README_START}\nstale table\n{README_END}\nafter\n")
    assert update_readme(readme, results) is True
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "stale table" not in text and readme_table(results) in text and "**Test CPU 9000**" in text
    assert update_readme(readme, results) is False, "already up to date"
    bare = tmp_path / "BARE.md"
    bare.write_text("# no markers\n")
    with pytest.raises(ValueError, match="bench-table:start"):
        update_readme(bare, results)


def test_render_prints_a_saved_json_and_rewrites_the_readme_without_measuring(tmp_path, capsys):
    path = write_json(fixed_results(MACHINE), tmp_path / "bench.json")
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    assert deploy_main(["bench", "--render", str(path), "--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    assert "emostream bench on Test CPU 9000" in out and f"readme: {readme} rewritten" in out
    assert "| pipeline ≥ 0.9 of its slowest stage run alone | 0.42" in readme.read_text()
    assert deploy_main(["bench", "--render", str(tmp_path / "missing.json")]) == 2
    assert "not a bench JSON file" in capsys.readouterr().err


def test_the_readme_performance_table_is_what_docs_bench_json_generates():
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index(README_START) + len(README_START) : readme.index(README_END)]
    expected = readme_table(read_json(REPO / "docs" / "bench.json"))
    assert block.strip() == expected.strip(), (
        "README.md's performance table is stale: python -m deploy bench --render docs/bench.json --readme README.md"
    )
    assert f"**{DOCUMENTED['machine']['cpu_model']}**" in block


def test_machine_info_records_the_cpu_model_every_serving_flag_and_the_usable_cpus():
    info = machine_info()
    assert info["cpu_model"] == cpu_info().model
    assert set(info["cpu_flags"]) == set(SERVING_FLAGS) and all(isinstance(v, bool) for v in info["cpu_flags"].values())
    assert info["native_bf16"] == cpu_info().native_bf16
    assert 1 <= info["usable_cpus"] <= info["cpu_count"]
    assert info["usable_cpus_source"] in ("affinity", "cgroup v1", "cgroup v2")
    # The engines' versions and the commit measured, so that two bench files can be told apart.
    assert info["onnxruntime"] and info["openvino"]
    if (REPO / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", info["commit"]), info["commit"]


def test_the_readme_table_and_the_report_name_the_commit_and_engines_when_the_file_has_them():
    results = fixed_results(MACHINE)
    results["headline"] = dataclasses.asdict(derive(results))
    # Files from before the commit and the engines were recorded.
    assert "at commit" not in readme_table(results) and "commit" not in format_report(results).splitlines()[1]
    results["machine"] = {
        **results["machine"],
        "commit": "0123456789abcdef0123456789abcdef01234567-dirty",
        "onnxruntime": "1.99.0",
        "openvino": "2099.1.0",
    }
    assert " at commit `0123456789ab-dirty` (" in readme_table(results)
    header = format_report(results).splitlines()[1]
    assert "onnxruntime 1.99.0, OpenVINO 2099.1.0; commit 0123456789ab-dirty;" in header


def test_machine_ticks_of_some_cpus_are_part_of_all_of_them():
    every = machine_ticks()
    ours = machine_ticks(watched_cpus())
    assert every and ours
    one = machine_ticks({min(watched_cpus())})
    assert one and one[1] <= ours[1] and one[0] <= ours[0]
    assert machine_ticks({10_000}) is None, "a CPU that does not exist has no ticks"
