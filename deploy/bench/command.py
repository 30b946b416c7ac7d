"""``python -m deploy bench``: every measurement in order, then the report, the JSON and the plot."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from classifier.settings import SHIPPED_ACCURATE_MODEL
from deploy.baseline import merge_baselines, run_baseline
from deploy.bench.allcore import measure_all_cores, stage_loops
from deploy.bench.endtoend import RunResult, run_end_to_end
from deploy.bench.procstats import CpuWatch
from deploy.bench.ratios import DEFINITIONS, derive
from deploy.bench.report import (
    all_runs,
    drops_text,
    format_report,
    read_json,
    steadiness_text,
    update_readme,
    write_json,
    write_plot,
)
from deploy.bench.settings import REPO, BenchSettings
from deploy.bench.soak import DEFAULT_INTERVAL_S, SOAK_CAMERAS, format_soak, run_soak, write_soak_plot
from deploy.bench.standalone import (
    DetectorResult,
    Measured,
    interval_study,
    measure_accurate,
    measure_classifier,
    measure_cpu_steadiness,
    measure_detector,
    measure_int8_peak,
    measure_matmul_peak,
    measure_runtimes,
    read_frames,
)
from deploy.config import ClassifierConfig
from deploy.plan import split_threads
from emostream.cpu import CpuBudget, cpu_budget, cpu_info, thread_budget
from emostream.jsonutil import json_ready
from emostream.onnxmodel import ENGINES
from emostream.runtime import tune_malloc
from emostream.settings_cli import positive_number

if TYPE_CHECKING:
    from detector.settings import DetectorBackend

EXIT_MISSING = 2


class Progress:
    """One line per step on stderr with elapsed time: readable in a terminal and in a CI log alike."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr

    def step(self, text: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        print(f"[bench {self.done}/{self.total} +{elapsed:5.0f}s] {text}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        print(f"    {text}", file=self.stream, flush=True)


def source_commit() -> str | None:
    """The checkout's git commit, ``-dirty`` appended when tracked files differ from it; None outside git."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if changed else "")


def machine_info(model_path: str | Path | None = None, budget: CpuBudget | None = None) -> dict[str, Any]:
    """The machine the bench ran on: the CPU's model and serving flags (emostream.cpu), the host's CPU
    count and the usable CPUs with what decided them, library versions and their thread counts, and the
    code's commit."""
    import torch

    from classifier.settings import SHIPPED_MODEL

    model = Path(model_path) if model_path else SHIPPED_MODEL
    cpu = cpu_info()
    budget = budget or cpu_budget()
    return {
        "cpu_count": budget.host_cpus,
        **budget.to_json(),
        "cpu_model": cpu.model,
        "cpu_flags": cpu.serving_flags(),
        "native_bf16": cpu.native_bf16,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        **{engine: _version_of(engine) for engine in ENGINES},  # each engine's package has its name
        "python": platform.python_version(),
        "platform": platform.platform(),
        "model_file": str(model),
        "loadavg_start": list(os.getloadavg()),
        "commit": source_commit(),
    }


def _version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _baseline_slice(settings: BenchSettings, progress: Progress, which: str) -> dict[str, Any]:
    """One slice of the study's loop (the baseline runs first and last), with the machine's load meanwhile."""
    n = settings.baseline_frames or "all"
    progress.step(
        f"baseline ({which} slice): the study's loop on {n} frames of {settings.video.name}, "
        f"at most {settings.baseline_slice_s:g} s"
    )
    with CpuWatch() as watch:
        result = run_baseline(
            settings.video, settings.baseline_frames, chunk=settings.chunk, max_seconds=settings.baseline_slice_s
        )
    result["cpu_watch"] = watch.result.to_json() if watch.result else None
    progress.note(f"{result['fps']:.1f} frames/s on {result['frames']} frames")
    return result


def _measures_all_cores(settings: BenchSettings, budget: CpuBudget) -> bool:
    """Whether the bench runs the all-core step: asked for, and more than one CPU to fill."""
    return settings.all_core_s > 0 and budget.cpus > 1


def _standalone(
    settings: BenchSettings, progress: Progress, budget: CpuBudget, detector_threads: int
) -> dict[str, Any]:
    """Decode, the detectors (on ``detector_threads``, as each pipeline worker runs), the interval study,
    the classifier and the matmul peak (on the usable CPUs), in this process."""
    progress.step(f"decode: {settings.stage_frames} frames")
    with CpuWatch() as watch:
        decode, frames = read_frames(settings.video, settings.stage_frames, settings.chunk)
    stages: dict[str, Measured] = {"decode": replace(decode, cpu_watch=watch.result)}
    progress.note(f"{decode.fps:.0f} frames/s")

    progress.step(f"detectors: YuNet and Haar at {settings.downscale:g}x on {len(frames)} frames")

    def detector_stage(
        frames: list[np.ndarray], backend: DetectorBackend, model: Path | None, interval: int = 1
    ) -> tuple[DetectorResult, list, list]:
        with CpuWatch() as watch:
            stage, stage_crops, stage_boxes = measure_detector(
                frames,
                backend,
                model,
                settings.downscale,
                settings.min_face,
                settings.chunk,
                interval=interval,
                threads=detector_threads,
            )
        return replace(stage, cpu_watch=watch.result), stage_crops, stage_boxes

    yunet, crops, yunet_boxes = detector_stage(frames, "yunet", settings.yunet)
    haar, _, _ = detector_stage(frames, "haar", None)
    stages.update(detector_yunet=yunet, detector_haar=haar)
    tracked: DetectorResult | None = None
    if settings.interval > 1:
        tracked = detector_stage(frames, "yunet", settings.yunet, settings.interval)[0]
        stages["detector_yunet_tracked"] = tracked
    study = interval_study(yunet_boxes, settings.intervals)
    kept = {row.interval: row.faces_kept for row in study}
    note = f"YuNet {yunet.fps:.1f} frames/s ({yunet.faces_per_frame:.2f} faces/frame), "
    note += f"Haar {haar.fps:.1f} frames/s ({haar.faces_per_frame:.2f} faces/frame)"
    if tracked is not None:
        note += f"; YuNet at interval {settings.interval}: {tracked.fps:.1f} frames/s, "
        note += f"{100 * kept.get(settings.interval, 1.0):.1f}% of faces kept"
    progress.note(note)
    all_cores: dict[str, Any] | None = None
    if _measures_all_cores(settings, budget):
        progress.step(
            f"decode and YuNet at interval {settings.interval}, each alone, then one copy on each of the "
            f"{budget.cpus} usable CPUs at once, {settings.all_core_s:g} s each"
        )
        loops = stage_loops(
            settings.video, settings.yunet, settings.downscale, settings.min_face, settings.interval, len(frames)
        )
        measured = [measure_all_cores(loop, budget.cpus, settings.all_core_s) for loop in loops]
        all_cores = {m.stage: m.to_json() for m in measured}
        progress.note("; ".join(f"{m.stage} {m.slowdown:.2f}x its CPU per frame alone" for m in measured))
    del frames  # ~2.7 MB each at 720p: free them before the pipeline runs start their own processes

    all_crops = np.concatenate(crops) if crops else np.empty((0, 48, 48), np.uint8)
    progress.step(f"classifier: batch 1 vs batch {settings.max_batch} on {len(all_crops)} real crops")
    with CpuWatch() as watch:
        cls = measure_classifier(
            all_crops,
            max_batch=settings.max_batch,
            batch1_faces=settings.batch1_faces,
            batched_batches=settings.batched_batches,
            sweep=settings.sweep,
            rounds=settings.classifier_rounds,
            max_seconds=settings.classifier_max_s,
        )
    cls = replace(cls, cpu_watch=watch.result)
    progress.note(
        f"{cls.runtime}: batch 1 {cls.batch1_faces_per_s:.0f} faces/s, "
        f"batch {settings.max_batch} {cls.batched_faces_per_s:.0f} faces/s"
        + (f"; served on {cls.torch_runtime} {cls.torch_faces_per_s:.0f}" if cls.torch_faces_per_s else "")
    )
    runtime_threads = sorted({1, budget.cpus})
    progress.step(f"classifier runtimes side by side: batch 1 and {settings.max_batch}, threads {runtime_threads}")
    cls = replace(cls, runtimes=measure_runtimes(None, settings.max_batch, runtime_threads))
    progress.note(
        "; ".join(
            f"{r['runtime']} x{r['threads']} {r['faces_per_s_by_batch'][settings.max_batch]:.0f} faces/s"
            for r in cls.runtimes or []
        )
    )

    accurate = None
    if settings.accurate_model:
        progress.step(
            f"accurate model: {settings.accurate_model.name} against the default at batch {settings.max_batch}, "
            "side by side, each as served"
        )
        with CpuWatch() as watch:
            accurate = measure_accurate(
                all_crops,
                settings.accurate_model,
                max_batch=settings.max_batch,
                rounds=settings.classifier_rounds,
                max_seconds=settings.classifier_max_s,
            )
        accurate = replace(accurate, cpu_watch=watch.result)
        progress.note(
            f"{accurate.runtime} {accurate.faces_per_s:.0f} faces/s against the default's "
            f"{accurate.default_runtime} {accurate.default_faces_per_s:.0f}: {accurate.over_default:.2f}x"
        )

    matmul_threads = thread_budget(settings.matmul_threads, budget)
    size = settings.matmul_size
    progress.step(f"matmul peak (bf16 where native, else float32): {size}^2 on {matmul_threads} threads")
    with CpuWatch() as watch:
        peak = measure_matmul_peak(settings.matmul_size, settings.matmul_reps, matmul_threads)
    peak = replace(peak, cpu_watch=watch.result)
    progress.note(f"{peak.gflops:.0f} GFLOP/s")
    int8_size = settings.int8_matmul_size
    progress.step(f"int8 matmul peak (onnxruntime MatMulInteger): {int8_size}^2 on {matmul_threads} threads")
    with CpuWatch() as watch:
        int8_peak = measure_int8_peak(int8_size, settings.matmul_reps, matmul_threads)
    int8_peak = replace(int8_peak, cpu_watch=watch.result)
    progress.note(f"{int8_peak.gflops:.0f} GOP/s")
    return {
        "stages": {name: stage.to_json() for name, stage in stages.items()},
        "interval_study": [row.to_json() for row in study],
        "classifier": cls.to_json(),
        "accurate_classifier": accurate.to_json() if accurate else None,
        "peak": peak.to_json(),
        "int8_peak": int8_peak.to_json(),
        "all_cores": all_cores,
    }


def _steadiness(settings: BenchSettings, progress: Progress, when: str) -> dict[str, Any]:
    """The CPU's steadiness (standalone.measure_cpu_steadiness) ``when``, as JSON."""
    progress.step(
        f"CPU steadiness {when}: one fixed single-thread workload in 0.2 s windows for {settings.steadiness_s:g} s"
    )
    with CpuWatch() as watch:
        steady = replace(measure_cpu_steadiness(settings.steadiness_s), cpu_watch=watch.result)
    progress.note(steadiness_text(steady.to_json()))
    return steady.to_json()


def _end_to_end(settings: BenchSettings, progress: Progress) -> dict[str, Any]:
    """The realtime runs, the max-throughput run over shared memory and over sockets, and the what-if."""

    def run(text: str, spec: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
        progress.step(text)
        result = run_end_to_end(
            settings.video,
            settings.yunet,
            spec,
            warmup_s=settings.warmup_s,
            measure_s=settings.measure_s,
            startup_timeout_s=settings.startup_timeout_s,
            workdir=workdir,
            env=env,
        )
        progress.note(_run_note(result))
        return result.to_json()

    fast = settings.spec(settings.fast_cameras, "fast", "block")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="emostream-bench-") as workdir:
        out["runs"] = [
            run(
                f"end to end: {cams} camera(s) at 25 fps, {settings.realtime_drop_policy}",
                settings.spec(cams, "realtime", settings.realtime_drop_policy),
            )
            for cams in settings.cameras
        ]
        out["max_throughput"] = run(
            f"end to end, max throughput: {settings.fast_cameras} camera(s), pacing fast, block", fast
        )
        out["max_throughput_socket"] = run(
            "end to end, max throughput again with frames over the sockets (network.shared_memory: false)",
            replace(fast, shared_memory=False),
        )
        if settings.what_if_env:
            env_text = " ".join(f"{k}={v}" for k, v in settings.what_if_env.items())
            out["what_if"] = run(
                f"what-if: the max-throughput run again with {env_text} (environment only)", fast, settings.what_if_env
            )
        out["accurate_run"] = None
        if settings.accurate_model:
            cams = max(settings.cameras)
            out["accurate_run"] = run(
                f"end to end with the accurate model {settings.accurate_model.name}: {cams} camera(s) at 25 fps, "
                f"{settings.realtime_drop_policy}",
                settings.accurate_spec(cams),
            )
    return out


def run_bench(settings: BenchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Every measurement in order; returns the bench's JSON document (``headline``: the derived numbers)."""
    import torch

    steady = settings.steadiness_s > 0
    started = time.time()
    budget = cpu_budget()
    extra_steps = (1 if settings.what_if_env else 0) + (2 if settings.accurate_model else 0) + (2 if steady else 0)
    extra_steps += 1 if _measures_all_cores(settings, budget) else 0
    # Baseline twice, decode, detectors, classifier, runtimes, matmul; the realtime runs; max throughput twice.
    progress = progress or Progress(7 + len(settings.cameras) + 2 + extra_steps)
    # The standalone classifier on the usable CPUs, not torch's count of the host's cores.
    torch.set_num_threads(budget.cpus)
    # The pipeline runs' detector threads, as the launcher splits the budget for them.
    split = split_threads(settings.workers, settings.detector_threads, ClassifierConfig().threads, budget)
    results: dict[str, Any] = {
        "command": shlex.join([sys.executable, "-m", "deploy", *sys.argv[1:]]),
        "argv": list(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "settings": json_ready(settings),
        "machine": {
            **machine_info(budget=budget),
            "pipeline_threads": {"detector_per_worker": split.detector, "classifier": split.classifier},
        },
        "definitions": DEFINITIONS,
    }
    first = _baseline_slice(settings, progress, "first")
    results.update(_standalone(settings, progress, budget, split.detector))
    # Right before and after the end-to-end runs: how steady the CPU was around them.
    steadiness = {"before_runs": _steadiness(settings, progress, "before the runs")} if steady else None
    results.update(_end_to_end(settings, progress))
    if steadiness is not None:
        steadiness["after_runs"] = _steadiness(settings, progress, "after the runs")
    results["cpu_steadiness"] = steadiness
    results["baseline"] = merge_baselines([first, _baseline_slice(settings, progress, "last")])
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.time() - started
    # In memory as computed (the report prints them); write_json makes them strict JSON.
    results["headline"] = asdict(derive(results))
    return results


def _run_note(run: RunResult) -> str:
    if run.error:
        return f"FAILED: {run.error}"
    lat, before, inside = run.window.latency_ms, run.window.to_detector_ms, run.window.in_classifier_ms
    drops = drops_text(run.drops.to_json() if run.drops else {})
    return (
        f"{run.window.events_per_s:.1f} events/s, p50/p99 {lat['p50']:.0f}/{lat['p99']:.0f} ms "
        f"(p99 to detector {before['p99']:.0f}, in classifier {inside['p99']:.0f}), drops {drops}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options (registered by deploy/__main__.py); defaults from :class:`BenchSettings`."""
    full, quick = BenchSettings(), BenchSettings.quick_settings()
    parser.add_argument(
        "--quick", action="store_true", help=f"fewer frames and {quick.measure_s:g} s windows: ~2-3 minutes"
    )
    parser.add_argument("--json", metavar="FILE", help="write every measurement as JSON here")
    parser.add_argument(
        "--render",
        metavar="FILE",
        help="measure nothing: print the report of a saved bench JSON (with --readme: rewrite the table from it)",
    )
    parser.add_argument(
        "--readme",
        metavar="FILE",
        help="rewrite the performance table between the bench-table markers of this README (e.g. README.md)",
    )
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of throughput and latency vs cameras here")
    parser.add_argument("--video", default=str(full.video), help="video file (default: %(default)s)")
    parser.add_argument("--yunet", default=str(full.yunet), help="YuNet .onnx (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=full.workers, help="detector workers in the pipeline runs (default %(default)s)"
    )
    parser.add_argument(
        "--cameras",
        default=",".join(str(c) for c in full.cameras),
        help="camera counts of the realtime runs (default %(default)s)",
    )
    parser.add_argument(
        "--interval",
        type=int,
        default=full.interval,
        help="detector.interval of the pipeline runs (default %(default)s; 1: detect every frame)",
    )
    parser.add_argument(
        "--fast-cameras",
        type=int,
        default=full.fast_cameras,
        help="cameras of the max-throughput run (default %(default)s)",
    )
    parser.add_argument(
        "--measure-seconds",
        type=float,
        help=f"measured window per pipeline run ({full.measure_s:g}, quick {quick.measure_s:g})",
    )
    parser.add_argument(
        "--soak",
        type=positive_number(),
        metavar="MINUTES",
        help=f"instead of the measurements: {SOAK_CAMERAS} live cameras for this long, every process's RSS, CPU "
        "and open fds over time (table, --json, --plot) and a verdict: RSS growth after warm-up, restarts, "
        "drops all counted (exit 1 when it fails)",
    )
    parser.add_argument(
        "--soak-interval",
        type=positive_number(),
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help="with --soak: seconds between samples (default %(default)s; at most a tenth of the run)",
    )
    parser.add_argument(
        "--accurate-model",
        metavar="FILE",
        help="the accurate operating point (an ensemble model file, python -m training ensemble): its faces/s "
        "side by side with the default model's, and the largest realtime run again serving it (default: "
        f"{SHIPPED_ACCURATE_MODEL.relative_to(REPO)} when it is shipped; 'none' skips it)",
    )
    parser.add_argument(
        "--what-if",
        action="append",
        metavar="NAME=VALUE",
        help="one more max-throughput run with this environment variable set (repeatable), e.g. "
        "EMOSTREAM_TUNE_MALLOC=0 to compare against glibc's default allocator (the launcher sets the stages' "
        "OMP_NUM_THREADS and the like itself: change thread counts in the config)",
    )


def _soak(args: argparse.Namespace, settings: BenchSettings) -> int:
    """``--soak MINUTES``: the long run instead of the measurements; 0 when its verdict passes."""
    result = run_soak(settings, args.soak, args.soak_interval)
    print(format_soak(result), flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_ready(result), indent=1) + "\n")
        print(f"\njson: {path}")
    if args.plot and result["samples"]:
        print(f"plot: {write_soak_plot(result, args.plot)}")
    if result["error"]:
        print(f"bench: soak failed: {result['error']}\n{result['log_tail']}", file=sys.stderr)
        return 1
    return 0 if result["verdict"] and result["verdict"]["ok"] else 1


def _write_readme(readme: str | None, results: dict[str, Any]) -> int:
    """Rewrite the README's performance table from ``results`` (nothing without ``--readme``); 0 or 2."""
    if not readme:
        return 0
    try:
        changed = update_readme(readme, results)
    except (OSError, ValueError) as exc:
        print(f"bench: --readme: {exc}", file=sys.stderr)
        return EXIT_MISSING
    print(f"readme: {readme} {'rewritten' if changed else 'already up to date'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``python -m deploy bench``: measure, print the table, write the JSON and the plot (``--render``:
    the report of a saved JSON instead of measuring); ``--readme``: rewrite the README's table too."""
    if args.render:
        try:
            results = read_json(args.render)
        except (OSError, ValueError, KeyError) as exc:
            print(f"bench: --render {args.render}: not a bench JSON file ({exc})", file=sys.stderr)
            return EXIT_MISSING
        print(format_report(results), flush=True)
        return _write_readme(args.readme, results)
    # The standalone measurements run in this process: with the allocator the stages run with.
    tune_malloc()
    for flag, path in (("--video", args.video), ("--yunet", args.yunet)):
        if not Path(path).is_file():
            print(f"bench: {flag} file not found: {Path(path).resolve()} (pass {flag} PATH)", file=sys.stderr)
            return EXIT_MISSING
    try:
        cameras = tuple(int(c) for c in args.cameras.split(",") if c.strip())
    except ValueError:
        print(f"bench: --cameras {args.cameras!r} is not a comma-separated list of integers", file=sys.stderr)
        return EXIT_MISSING
    if not cameras or min(cameras) < 1 or args.workers < 1 or args.fast_cameras < 1 or args.interval < 1:
        print("bench: --cameras, --workers, --fast-cameras and --interval must be positive", file=sys.stderr)
        return EXIT_MISSING
    overrides: dict[str, Any] = {
        "video": Path(args.video).resolve(),
        "yunet": Path(args.yunet).resolve(),
        "workers": args.workers,
        "interval": args.interval,
        "cameras": cameras,
        "fast_cameras": args.fast_cameras,
    }
    if args.measure_seconds:
        overrides["measure_s"] = args.measure_seconds
    accurate = args.accurate_model or (str(SHIPPED_ACCURATE_MODEL) if SHIPPED_ACCURATE_MODEL.is_file() else "none")
    if accurate != "none":
        if not Path(accurate).is_file():
            print(f"bench: --accurate-model file not found: {Path(accurate).resolve()}", file=sys.stderr)
            return EXIT_MISSING
        overrides["accurate_model"] = Path(accurate).resolve()
    if args.what_if:
        pairs = [item.partition("=") for item in args.what_if]
        if any(not name or not sep for name, sep, _ in pairs):
            print("bench: --what-if takes NAME=VALUE", file=sys.stderr)
            return EXIT_MISSING
        overrides["what_if_env"] = {name: value for name, _, value in pairs}
    settings = BenchSettings.quick_settings(**overrides) if args.quick else BenchSettings(**overrides)
    if args.soak:
        return _soak(args, settings)
    results = run_bench(settings)
    print(format_report(results), flush=True)
    if args.json:
        print(f"\njson: {write_json(results, args.json)}")
    if args.plot:
        print(f"plot: {write_plot(results, args.plot)}")
    if _write_readme(args.readme, results):
        return EXIT_MISSING
    failed = [r["label"] for r in all_runs(results) if r.get("error")]
    if failed:
        print(f"bench: pipeline runs failed: {', '.join(failed)} (see log_tail in the JSON)", file=sys.stderr)
        return 1
    return 0
