"""The derived numbers: headline throughput, latency and the ratios between measurements, computed
from the raw measurements only (no measuring), and how each is defined (written into the JSON)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deploy.bench.result import JsonResult

DEFINITIONS = {
    "baseline_fps": "frames/s of the study's sequential loop (deploy/baseline.py), median over 25-frame chunks",
    "end_to_end_fps": "best aggregate events/s (= frames/s end to end) among the realtime 1/2/4-camera runs",
    "p99_latency_ms": "p99 of ts_event - ts_capture (capture to classification) in the run that gave end_to_end_fps",
    "sink latency": "time the bench's SUB socket received the event minus ts_capture (adds the sink's hop)",
    "warm-up": "events are counted from warmup_s after the first event of a run, for measure_s seconds",
    "classifier_faces_per_s": "EmotionModel.predict on real 48x48 crops, batches of max_batch (bf16, channels-last)",
    "classifier_batched_over_batch1": "classifier_faces_per_s / faces/s of the same model called one face at a time",
    "classifier_tta_flip_faces_per_s": "classifier_faces_per_s served with flip test-time augmentation "
    "(classifier.tta: flip; each face and its mirror image in one batch): what flip TTA's accuracy costs",
    "classifier_share_of_peak": "model FLOPs/face (FlopCounterMode) x batched faces/s / the measured matmul peak "
    "of what the classifier computes in: int8 (onnxruntime MatMulInteger, int8_peak) for an int8 model file, "
    "else bf16 where native, else float32 (peak)",
    "classifier_batch1_ceiling": "the most classifier_batched_over_batch1 can be on this machine: that peak / "
    "(batch-1 faces/s x FLOPs/face), since batched faces/s x FLOPs/face cannot exceed the peak",
    "standalone rates": (
        "decode and detectors: median over chunks of 25 consecutive frames; classifier: every batch size "
        "measured in turn in each of several rounds, median over the rounds. A burst of other processes slows "
        "a few chunks or rounds and the median ignores them"
    ),
    "cpu_parallelism": "process CPU seconds / wall seconds during a standalone measurement (cores it kept busy)",
    "stage_capacity_fps": (
        "standalone fps x min(processes of that stage in the max-throughput run, usable_cpus / max(1, "
        "cpu_parallelism)): P processes can do at most P times one process, and never more than the machine's "
        "cores allow given how many cores one process already kept busy. Processes: decode = cameras of the "
        "max-throughput run, detector = detector.workers, classifier = 1. The classifier's faces/s is divided "
        "by YuNet's faces/frame to give frames/s"
    ),
    "pipeline_over_slowest_stage": "max_throughput_fps (fast pacing, block) / min(stage_capacity_fps)",
    "detector stage": (
        "with settings.interval N > 1 the detector stage is measured as the pipeline runs it (detection on one "
        "frame in N, the key frame's boxes reused on the others: detector_yunet_tracked) for stage capacity and "
        "CPU budget; detector_yunet is YuNet on every frame"
    ),
    "align_ms_per_face": (
        "stages.detector_*: the aligned crop's own CPU time per face (similarity fit and warp from the "
        "full-resolution frame), timed apart on the faces the detector found; part of the detector's per-frame cost"
    ),
    "interval_study": (
        "YuNet's boxes on every frame of the video; with interval N each frame reuses its key frame's boxes. "
        "faces_kept = share of the detector's faces on the in-between frames covered by a held box with "
        "IoU >= 0.5; held_unmatched = share of held boxes covering no detected face"
    ),
    "shared_memory_over_socket": (
        "max_throughput_fps / socket_fps: the max-throughput run with frames through /dev/shm (the default) over "
        "the same run with network.shared_memory false (every frame over its TCP socket)"
    ),
    "pipeline_over_slowest_stage_unscaled": "max_throughput_fps / min(standalone fps, without process scaling)",
    "cpu_budget_fps": (
        "usable_cpus / sum of standalone CPU seconds per frame (decode + detector + classifier x faces/frame): "
        "the most any arrangement of these stages could do on this machine; ZeroMQ copies, the sink and "
        "the launcher come on top. Decode and detector: all_cores.*.alone_cpu_s_per_frame where measured "
        "(seconds of the same loop), else the stage pass's cpu_s_per_frame"
    ),
    "cpu_budget_all_cores_fps": (
        "the same with decode and the detector at all_cores.*.all_cores_cpu_s_per_frame: one single-threaded "
        "copy on each usable CPU at once (deploy/bench/allcore.py). It tells the machine's own slowdown with "
        "every CPU busy apart from the pipeline's overhead; the target stays on cpu_budget_fps"
    ),
    "events_per_s": (
        "events received in the window / its length (a mean: in a pipeline a stall is followed by a catch-up "
        "burst, so per-second bins are not independent samples and their median would not be a throughput)"
    ),
    "what_if_fps": (
        "with --what-if NAME=VALUE: the max-throughput run again with only the stages' environment changed "
        "(no code or config change); what_if_over_max_throughput = what_if_fps / max_throughput_fps"
    ),
    "accurate_over_default": (
        "accurate_classifier: the accurate model's faces/s over the default model's at max_batch, each served as "
        "the classifier serves it (classifier.runtime auto), in alternating rounds, medians; accurate_run: the "
        "largest realtime run again with classifier.model the accurate file (--accurate-model), the classifier's "
        "other settings their defaults"
    ),
    "cpu_steadiness": (
        "one fixed single-thread workload (OpenCV blur of a 720p frame) timed in 0.2 s windows, nothing else of "
        "the bench running, right before the end-to-end runs and right after them (before_runs, after_runs): "
        "below[P] = share of windows slower than P% of the median window, slowest = the "
        "slowest window / the median. It describes the machine (a VM's host can slow its CPUs this way without "
        "steal time); it did not foretell a run's p99 (docs/benchmarks.md)"
    ),
    "to_detector_ms": (
        "percentiles of ts_detect - ts_capture (capture to the detector done with the frame) over the window's "
        "events; in_classifier_ms: of ts_event - ts_detect. Percentiles of each part: they need not add up"
    ),
    "drops": "emostream_frames_dropped_total from every stage's /metrics: total at the end and delta in the window",
    "usable_cpus": (
        "the CPUs the bench may use: min(its affinity mask, its cgroup CPU quota rounded up), what sizes the "
        "stages' thread pools (emostream/cpu.py); files from before it was recorded: cpu_count, the host's"
    ),
    "realtime runs": (
        "cameras replay the file at 25 fps with drop_policy drop_oldest, i.e. like live cameras that cannot "
        "wait: what the pipeline cannot take is dropped at capture and counted (reason overload)"
    ),
}


def stage_capacity(fps: float, parallelism: float, processes: int, cpus: int) -> float:
    """Frames/s ``processes`` copies of a stage can reach on ``cpus``: see DEFINITIONS["stage_capacity_fps"]."""
    return fps * min(processes, cpus / max(1.0, parallelism))


def usable_cpus(machine: dict[str, Any]) -> int:
    """The CPUs the bench could use (``usable_cpus``); older files recorded only the host's ``cpu_count``."""
    return int(machine.get("usable_cpus") or machine["cpu_count"])


@dataclass(frozen=True)
class Headline(JsonResult):
    """The headline numbers; see DEFINITIONS. None where the run they come from failed or did not run."""

    baseline_fps: float
    end_to_end_fps: float
    end_to_end_cameras: int | None
    p50_latency_ms: float | None
    p99_latency_ms: float | None
    end_to_end_over_baseline: float | None
    max_throughput_fps: float | None
    max_throughput_over_baseline: float | None
    socket_fps: float | None
    shared_memory_over_socket: float | None
    what_if_env: dict[str, str] | None
    what_if_fps: float | None
    what_if_p99_latency_ms: float | None
    what_if_over_max_throughput: float | None
    classifier_faces_per_s: float
    classifier_batch1_faces_per_s: float
    classifier_batched_over_batch1: float | None
    classifier_tta_flip_faces_per_s: float | None
    classifier_gflops: float
    #: The float matmul peak: bf16 where the CPU has it natively, else float32 (``peak.dtype`` says which).
    float_peak_gflops: float
    #: None in files from before the int8 peak was measured.
    int8_peak_gops: float | None
    #: The peak the classifier is measured against ("int8", "bfloat16", "float32").
    classifier_peak_dtype: str
    classifier_share_of_peak: float | None
    classifier_batch1_ceiling: float | None
    stage_standalone_fps: dict[str, float]
    stage_processes: dict[str, int]
    stage_capacity_fps: dict[str, float]
    slowest_stage: str
    pipeline_over_slowest_stage: float | None
    pipeline_over_slowest_stage_unscaled: float | None
    cpu_s_per_frame_by_stage: dict[str, float]
    cpu_budget_fps: float | None
    pipeline_over_cpu_budget: float | None
    #: None where the file has no all-core measurement (older files, one usable CPU).
    cpu_budget_all_cores_fps: float | None
    pipeline_over_all_core_budget: float | None
    detector_interval: int
    faces_kept_at_interval: float | None
    accurate_faces_per_s: float | None
    accurate_over_default: float | None
    accurate_events_per_s: float | None
    accurate_p99_latency_ms: float | None


def _fps(run: dict[str, Any] | None) -> float | None:
    """A run's events/s, or None when it did not run, failed or delivered nothing."""
    return run["events_per_s"] if run and not run.get("error") and run.get("events") else None


def _runs(results: dict[str, Any], baseline_fps: float) -> dict[str, Any]:
    """The end-to-end numbers: the best realtime run, max throughput, sockets and the what-if."""
    ok_runs = [r for r in results.get("runs", []) if _fps(r) is not None]
    best = max(ok_runs, key=lambda r: r["events_per_s"], default=None)
    e2e = best["events_per_s"] if best else 0.0
    max_fps = _fps(results.get("max_throughput"))
    socket_fps = _fps(results.get("max_throughput_socket"))
    what_if = results.get("what_if") or {}
    wi_fps = _fps(what_if)
    return {
        "end_to_end_fps": e2e,
        "end_to_end_cameras": best["cameras"] if best else None,
        "p50_latency_ms": best["latency_ms"]["p50"] if best else None,
        "p99_latency_ms": best["latency_ms"]["p99"] if best else None,
        "end_to_end_over_baseline": e2e / baseline_fps if baseline_fps else None,
        "max_throughput_fps": max_fps,
        "max_throughput_over_baseline": max_fps / baseline_fps if max_fps and baseline_fps else None,
        "socket_fps": socket_fps,
        "shared_memory_over_socket": max_fps / socket_fps if max_fps and socket_fps else None,
        "what_if_env": what_if.get("env"),
        "what_if_fps": wi_fps,
        "what_if_p99_latency_ms": what_if["latency_ms"]["p99"] if wi_fps else None,
        "what_if_over_max_throughput": wi_fps / max_fps if wi_fps and max_fps else None,
    }


def _classifier(cls: dict[str, Any], peak: dict[str, Any], int8_peak: dict[str, Any] | None) -> dict[str, Any]:
    gflops = cls["batched_faces_per_s"] * cls["flops_per_face"] / 1e9
    batch1_gflops = cls["batch1_faces_per_s"] * cls["flops_per_face"] / 1e9
    # An int8 model file computes in int8: against a float peak it would seem to beat the machine. Files
    # from before the int8 peak was measured have no peak to hold it against.
    served_int8 = "int8" in (cls.get("runtime") or "")
    own = (int8_peak or {}) if served_int8 else peak
    own_gflops = own.get("gflops")
    return {
        "classifier_faces_per_s": cls["batched_faces_per_s"],
        "classifier_batch1_faces_per_s": cls["batch1_faces_per_s"],
        "classifier_batched_over_batch1": (
            cls["batched_faces_per_s"] / cls["batch1_faces_per_s"] if cls["batch1_faces_per_s"] else None
        ),
        "classifier_tta_flip_faces_per_s": cls.get("tta_flip_faces_per_s"),
        "classifier_gflops": gflops,
        "float_peak_gflops": peak["gflops"],
        "int8_peak_gops": int8_peak["gflops"] if int8_peak else None,
        "classifier_peak_dtype": "int8" if served_int8 else peak.get("dtype", "bfloat16"),
        "classifier_share_of_peak": gflops / own_gflops if own_gflops else None,
        "classifier_batch1_ceiling": own_gflops / batch1_gflops if own_gflops and batch1_gflops else None,
    }


def _stages(results: dict[str, Any], max_fps: float | None) -> dict[str, Any]:
    """Stage capacities, the slowest stage and the CPU budget, against the max-throughput run."""
    cpus = usable_cpus(results["machine"])
    settings, cls = results["settings"], results["classifier"]
    decode = results["stages"]["decode"]
    # The detector stage as the pipeline runs it: at its detection interval when there is one.
    det = results["stages"].get("detector_yunet_tracked") or results["stages"]["detector_yunet"]
    faces_per_frame = det["faces_per_frame"]
    cls_fps = cls["batched_faces_per_s"] / faces_per_frame if faces_per_frame else float("inf")
    processes = {"decode": int(settings["fast_cameras"]), "detector": int(settings["workers"]), "classifier": 1}
    standalone = {"decode": decode["fps"], "detector": det["fps"], "classifier": cls_fps}
    parallelism = {
        "decode": decode["cpu_parallelism"],
        "detector": det["cpu_parallelism"],
        "classifier": cls["cpu_parallelism"],
    }
    capacity = {k: stage_capacity(standalone[k], parallelism[k], processes[k], cpus) for k in standalone}
    slowest = min(capacity, key=lambda k: capacity[k])
    cpu_per_frame = {
        "decode": decode["cpu_s_per_frame"],
        "detector": det["cpu_s_per_frame"],
        "classifier": cls["cpu_s_per_face"] * faces_per_frame,
    }
    all_cores = results.get("all_cores") or {}
    # Where measured, decode's and the detector's costs come from the all-core step's loops alone: seconds of
    # the same work are steadier than the 1-2 s pass over the stage frames (docs/benchmarks.md).
    cpu_per_frame.update({stage: float(m["alone_cpu_s_per_frame"]) for stage, m in all_cores.items()})
    busy = {**cpu_per_frame, **{stage: float(m["all_cores_cpu_s_per_frame"]) for stage, m in all_cores.items()}}
    budget = cpus / sum(cpu_per_frame.values()) if sum(cpu_per_frame.values()) > 0 else None
    all_core_budget = cpus / sum(busy.values()) if all_cores and sum(busy.values()) > 0 else None
    interval = int(det.get("interval", 1))
    study = {row["interval"]: row for row in results.get("interval_study", [])}
    return {
        "stage_standalone_fps": standalone,
        "stage_processes": processes,
        "stage_capacity_fps": capacity,
        "slowest_stage": slowest,
        "pipeline_over_slowest_stage": max_fps / capacity[slowest] if max_fps else None,
        "pipeline_over_slowest_stage_unscaled": max_fps / min(standalone.values()) if max_fps else None,
        "cpu_s_per_frame_by_stage": cpu_per_frame,
        "cpu_budget_fps": budget,
        "pipeline_over_cpu_budget": max_fps / budget if max_fps and budget else None,
        "cpu_budget_all_cores_fps": all_core_budget,
        "pipeline_over_all_core_budget": max_fps / all_core_budget if max_fps and all_core_budget else None,
        "detector_interval": interval,
        "faces_kept_at_interval": study[interval]["faces_kept"] if study.get(interval) else None,
    }


def _accurate(results: dict[str, Any]) -> dict[str, Any]:
    """The accurate operating point's numbers, None without ``--accurate-model`` (older files have neither key)."""
    measured = results.get("accurate_classifier") or {}
    run = results.get("accurate_run")
    fps = _fps(run)
    return {
        "accurate_faces_per_s": measured.get("faces_per_s"),
        "accurate_over_default": measured.get("over_default"),
        "accurate_events_per_s": fps,
        "accurate_p99_latency_ms": run["latency_ms"]["p99"] if run and fps else None,
    }


def derive(results: dict[str, Any]) -> Headline:
    """The headline numbers and ratios, computed from the raw measurements in ``results`` only.

    ``results`` is the bench's JSON document (as :func:`deploy.bench.run_bench` builds it and as
    ``--json`` writes it): ``baseline``, ``stages`` (decode, detector_yunet), ``classifier``, ``peak``, ``int8_peak``,
    ``runs``, ``max_throughput``, ``settings`` (workers, fast_cameras) and ``machine`` (usable_cpus or cpu_count).
    Kept pure (no measuring) so that tests can check the arithmetic on fixed numbers.
    """
    baseline_fps = float(results["baseline"]["fps"])
    runs = _runs(results, baseline_fps)
    return Headline(
        baseline_fps=baseline_fps,
        **runs,
        **_classifier(results["classifier"], results["peak"], results.get("int8_peak")),
        **_stages(results, runs["max_throughput_fps"]),
        **_accurate(results),
    )
