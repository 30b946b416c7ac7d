"""End to end: the real pipeline under the launcher (``python -m deploy run``), measured from the
outside as a user would: events from the sink's PUB socket, drops and batch sizes from every stage's
``/metrics``, CPU time from /proc."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import yaml
import zmq

from deploy.bench.procstats import Snapshot, busy_cores, stage_pids, take_snapshot, watched_cpus
from deploy.bench.result import JsonResult
from deploy.bench.settings import REPO, PipelineSpec, pipeline_config
from deploy.plan import endpoints, metrics_ports, thread_split
from emostream.stats import percentiles

#: Events still received this long after a window count as delivered (not as a gap in the frame
#: numbers): with several detector workers, frames of one camera can overtake each other.
GAP_GRACE_S = 1.0


class Record(NamedTuple):
    """One event as received by the bench."""

    received: float
    camera: str
    frame: int
    ts_capture: float
    #: None from a classifier that does not stamp it.
    ts_detect: float | None
    ts_event: float
    faces: int

    @property
    def to_detector_s(self) -> float | None:
        """Capture to the detector done with the frame: queues, transport and detection."""
        return None if self.ts_detect is None else self.ts_detect - self.ts_capture

    @property
    def in_classifier_s(self) -> float | None:
        """Detector done to classified: transport, the classifier's queue and batch."""
        return None if self.ts_detect is None else self.ts_event - self.ts_detect


def seq_gaps(window_frames: Sequence[int], delivered: set[int]) -> int:
    """Frame numbers between the first and last frame of the window that were never delivered.

    ``delivered`` holds every frame number received in the whole run (before the window and up to
    GAP_GRACE_S after it), so frames reordered across the window's edges are not counted: what is
    left are frames lost after capture numbered them (a drop_oldest capture's overload drops).
    """
    if not window_frames:
        return 0
    first, last = min(window_frames), max(window_frames)
    return sum(1 for f in range(first, last + 1) if f not in delivered)


def _max_ms(values: Iterator[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return float(max(known) * 1000) if known else None


def timeline(records: Sequence[Record], origin: float, bin_s: float = 1.0) -> list[dict[str, float | None]]:
    """Events/s and p50/max latency per ``bin_s`` from ``origin``: shows whether warm-up was long enough,
    and in a slow second, whether the time went before the classifier or in it (the max of each part)."""
    bins: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        bins[int((record.received - origin) // bin_s)].append(record)
    out: list[dict[str, float | None]] = []
    for k, rows in sorted(bins.items()):
        latency = [r.ts_event - r.ts_capture for r in rows]
        out.append(
            {
                "t_s": k * bin_s,
                "events_per_s": len(rows) / bin_s,
                "p50_ms": float(np.median(latency) * 1000),
                "max_ms": float(max(latency) * 1000),
                "max_to_detector_ms": _max_ms(r.to_detector_s for r in rows),
                "max_in_classifier_ms": _max_ms(r.in_classifier_s for r in rows),
            }
        )
    return out


@dataclass(frozen=True)
class WindowStats(JsonResult):
    """What the events received in the measured window say."""

    events: int
    window_s: float
    events_per_s: float
    per_camera_events_per_s: dict[str, float]
    faces_per_frame: float
    latency_ms: dict[str, float]
    #: The two parts of latency_ms (percentiles of each part, so they need not add up).
    to_detector_ms: dict[str, float]
    in_classifier_ms: dict[str, float]
    sink_latency_ms: dict[str, float]
    seq_gaps: int
    timeline: list[dict[str, float | None]]


@dataclass(frozen=True)
class DropStats(JsonResult):
    """emostream_frames_dropped_total at the end of the window, and what the window added."""

    drops_total: list[dict[str, Any]]
    drops_in_window: dict[str, float]
    #: Series read, zero or not: proof the counters were scraped.
    drop_series: int
    metrics_scraped: list[str]
    metrics_errors: dict[str, str]


@dataclass(frozen=True)
class StageLoad(JsonResult):
    """What the stages did in the window, from the /metrics and CPU snapshots at its two ends."""

    classifier_mean_batch: float
    detections_per_frame: float | None
    detector_ms_per_frame: float
    classifier_ms_per_call: float
    cpu_cores_by_stage: dict[str, float]
    machine_busy_cores: float | None
    #: Everything busy that is neither a pipeline stage nor this bench: other people's work.
    other_processes_cores: float | None


#: What a run's JSON repeats of its PipelineSpec.
RUN_SPEC_FIELDS = (
    "cameras",
    "pacing",
    "drop_policy",
    "workers",
    "interval",
    "shared_memory",
    "stagger",
    "emotion_model",
    "classify_every_max",
)


@dataclass(frozen=True)
class RunInfo(JsonResult):
    """What ran: the pipeline's shape, how it started and ended, and its launcher config."""

    label: str
    cameras: int
    pacing: str
    drop_policy: str
    workers: int
    interval: int
    shared_memory: bool
    stagger: bool
    emotion_model: str | None
    classify_every_max: int | None
    offered_fps: float | None
    warmup_s: float
    startup_s: float | None
    launcher_exit_code: int
    env: dict[str, str]
    error: str | None
    config: dict[str, Any]
    #: The launcher's CPU pinning of this config on this machine (supervisor.pin_cpus), as its log says it.
    cpu_pinning: str = ""


@dataclass(frozen=True)
class RunResult(JsonResult):
    """One end-to-end run; its JSON is one flat object (the groups' keys in this order)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"drops", "load", "log_tail"})

    window: WindowStats
    drops: DropStats | None
    load: StageLoad | None
    info: RunInfo
    #: The launcher's log, only when the run failed.
    log_tail: str | None = None

    @property
    def error(self) -> str | None:
        return self.info.error

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in super().to_json().items():
            out.update(value if isinstance(value, dict) and key != "log_tail" else {key: value})
        return out


def window_stats(all_records: Sequence[Record], window_start: float, window_s: float) -> WindowStats:
    """Per-run numbers of the events received in [window_start, window_start + window_s).

    ``all_records`` holds every event since the first one; those outside the window appear in the
    timeline only.
    """
    records = [r for r in all_records if window_start <= r.received < window_start + window_s]
    per_camera: dict[str, list[int]] = defaultdict(list)
    for record in records:
        per_camera[record.camera].append(record.frame)
    events = len(records)
    return WindowStats(
        events=events,
        window_s=window_s,
        events_per_s=events / window_s if window_s > 0 else 0.0,
        per_camera_events_per_s={c: len(f) / window_s for c, f in sorted(per_camera.items())},
        faces_per_frame=sum(r.faces for r in records) / events if events else 0.0,
        latency_ms=percentiles((r.ts_event - r.ts_capture for r in records), scale=1000.0),
        to_detector_ms=percentiles((v for r in records if (v := r.to_detector_s) is not None), scale=1000.0),
        in_classifier_ms=percentiles((v for r in records if (v := r.in_classifier_s) is not None), scale=1000.0),
        sink_latency_ms=percentiles((r.received - r.ts_capture for r in records), scale=1000.0),
        seq_gaps=sum(
            seq_gaps(frames, {r.frame for r in all_records if r.camera == camera})
            for camera, frames in per_camera.items()
        ),
        timeline=timeline(all_records, all_records[0].received) if all_records else [],
    )


def drop_stats(start: Snapshot | None, end: Snapshot) -> DropStats:
    """Drops by (stage, camera, reason) at the end, and by stage/reason within the window."""
    total = end.drops()
    before = start.drops() if start is not None else {}
    by_stage: dict[str, float] = defaultdict(float)
    for (stage, camera, reason), value in total.items():
        delta = value - before.get((stage, camera, reason), 0.0)
        if delta:
            by_stage[f"{stage}/{reason}"] += delta
    return DropStats(
        drops_total=[
            {"stage": s, "camera": c, "reason": r, "frames": v} for (s, c, r), v in sorted(total.items()) if v
        ],
        drops_in_window=dict(sorted(by_stage.items())),
        drop_series=len(total),
        metrics_scraped=sorted(end.samples),
        metrics_errors=end.errors,
    )


def stage_load(start: Snapshot, end: Snapshot) -> StageLoad:
    """Batch sizes, detections and stage times (from /metrics) and cores per stage (from /proc) in the window."""

    def delta(name: str, **labels: str) -> float:
        return end.total(name, **labels) - start.total(name, **labels)

    batches = delta("emostream_classifier_batch_size_count")
    det = delta("emostream_stage_seconds_count", stage="detector")
    cls = delta("emostream_stage_seconds_count", stage="classifier")
    frames_detected = delta("emostream_frames_total", stage="detector")
    wall = end.at - start.at
    cores: dict[str, float] = defaultdict(float)
    for name, cpu in end.cpu.items():
        if name in start.cpu and wall > 0:
            cores[name.split("-")[0]] += (cpu - start.cpu[name]) / wall
    machine = busy_cores(start.ticks, end.ticks, len(watched_cpus()))
    return StageLoad(
        classifier_mean_batch=delta("emostream_classifier_batch_size_sum") / batches if batches else 0.0,
        detections_per_frame=delta("emostream_detections_total") / frames_detected if frames_detected else None,
        detector_ms_per_frame=1000 * delta("emostream_stage_seconds_sum", stage="detector") / det if det else 0.0,
        classifier_ms_per_call=1000 * delta("emostream_stage_seconds_sum", stage="classifier") / cls if cls else 0.0,
        cpu_cores_by_stage=dict(sorted(cores.items())),
        machine_busy_cores=machine,
        other_processes_cores=max(0.0, machine - sum(cores.values())) if machine is not None else None,
    )


@dataclass
class _Collector:
    """The events of one run and the /metrics snapshots at its window's two ends, as they arrive."""

    proc: subprocess.Popen
    log_path: Path
    ports: dict[str, int]
    warmup_s: float
    measure_s: float
    launched: float
    records: list[Record] = field(default_factory=list)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    threads: dict[str, threading.Thread] = field(default_factory=dict)
    first_at: float | None = None
    window_start: float = float("inf")
    window_end: float = float("inf")

    def snapshot_in_background(self, name: str) -> None:
        # In a thread: scraping ~10 ports takes tens of ms, during which our receive times (the
        # sink-side latency) would otherwise stall.
        pids = {**stage_pids(self.log_path.read_text()), "launcher": self.proc.pid, "bench": os.getpid()}
        self.threads[name] = threading.Thread(
            target=lambda: self.snapshots.__setitem__(name, take_snapshot(self.ports, pids)), daemon=True
        )
        self.threads[name].start()

    def receive(self, sub: zmq.Socket) -> None:
        """Every event waiting on ``sub``; the first one opens the window ``warmup_s`` later."""
        for event in waiting_face_events(sub):
            received = time.time()
            if self.first_at is None:
                self.first_at = received
                self.window_start = received + self.warmup_s
                self.window_end = self.window_start + self.measure_s
            ts_detect = event.get("ts_detect")
            self.records.append(
                Record(
                    received,
                    event["camera"],
                    int(event["frame"]),
                    float(event["ts_capture"]),
                    None if ts_detect is None else float(ts_detect),
                    float(event["ts_event"]),
                    len(event["faces"]),
                )
            )

    def run(self, sub: zmq.Socket, startup_timeout_s: float) -> str | None:
        """Receive until GAP_GRACE_S after the window; the error that ended it early, if any."""
        while True:
            now = time.time()
            if now >= self.window_end + GAP_GRACE_S:
                break
            if self.first_at is None and now - self.launched > startup_timeout_s:
                return f"no event within {startup_timeout_s:.0f} s of starting the launcher"
            if self.proc.poll() is not None:
                return f"the launcher exited early with code {self.proc.returncode}"
            if "start" not in self.threads and now >= self.window_start:
                self.snapshot_in_background("start")
            if "end" not in self.threads and now >= self.window_end:
                self.snapshot_in_background("end")
            if sub.poll(50):
                self.receive(sub)
        for thread in self.threads.values():
            thread.join(timeout=30)
        return None


def waiting_face_events(sub: zmq.Socket) -> Iterator[dict[str, Any]]:
    """Every ``faces`` event waiting on the SUB socket ``sub`` now, decoded; returns when none is left."""
    while True:
        try:
            parts = sub.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        event = json.loads(parts[1])
        if event.get("type") == "faces":
            yield event


def events_socket(publish: str) -> zmq.Socket:
    """The bench's subscriber to the sink's events: every event, none lost on this side."""
    sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)  # never lose events on our side: the count is the measurement
    sub.connect(publish)  # before the sink binds: ZeroMQ connects once it is there
    return sub


def run_end_to_end(
    video: str | Path,
    yunet: str | Path,
    spec: PipelineSpec,
    *,
    warmup_s: float = 5.0,
    measure_s: float = 30.0,
    startup_timeout_s: float = 120.0,
    workdir: str | Path | None = None,
    env: dict[str, str] | None = None,
) -> RunResult:
    """Run the real pipeline under the launcher and measure it from the outside, as a user would.

    ``env``: extra environment variables for the launcher and so for every stage (e.g. thread counts),
    which lets the bench try a what-if without touching the pipeline's code or config.

    Events come from a SUB socket on the sink's publish endpoint; the window opens ``warmup_s`` after
    the first event (model loading and the first frames' one-off costs stay out) and lasts
    ``measure_s``. Every stage's /metrics and CPU time are read when the window opens and closes;
    then the launcher gets SIGTERM. ``--duration`` is only a safety net: should this process die,
    the launcher still stops by itself.
    """
    config, parsed = pipeline_config(video, yunet, spec)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="emostream-bench-"))
        workdir = Path(workdir)
        label = spec.label + "".join(f"-{k}={v}" for k, v in (env or {}).items())
        config_path = workdir / f"pipeline-{label}.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        log_path = workdir / f"launcher-{label}.log"
        safety_duration = startup_timeout_s + warmup_s + measure_s + 30.0
        sub = events_socket(endpoints(parsed).events)
        launched = time.time()
        proc = start_launcher(config_path, safety_duration, log_path, env)
        run = _Collector(proc, log_path, metrics_ports(parsed), warmup_s, measure_s, launched)
        try:
            error = run.run(sub, startup_timeout_s)
        finally:
            sub.close()
            code = stop_launcher(proc)
        start, end = run.snapshots.get("start"), run.snapshots.get("end")
        info = RunInfo(
            label=label,
            **{name: getattr(spec, name) for name in RUN_SPEC_FIELDS},
            offered_fps=25.0 * spec.cameras if spec.pacing == "realtime" else None,
            warmup_s=warmup_s,
            startup_s=(run.first_at - run.launched) if run.first_at else None,
            launcher_exit_code=code,
            env=dict(env or {}),
            error=error,
            config=config,
            cpu_pinning=thread_split(parsed).pinning,
        )
        return RunResult(
            window=window_stats(run.records, run.window_start, measure_s),
            drops=drop_stats(start, end) if end is not None else None,
            load=stage_load(start, end) if start is not None and end is not None else None,
            info=info,
            log_tail=log_path.read_text()[-3000:] if error else None,
        )


def start_launcher(
    config_path: Path, duration_s: float, log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``python -m deploy run`` on ``config_path`` for at most ``duration_s`` (a safety bound), quiet, its
    output in ``log_path``, in a session of its own; ``env`` on top of this process's environment."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "deploy", "run", "--config", str(config_path)]
            + ["--duration", f"{duration_s:.0f}", "--quiet"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )


def stop_launcher(proc: subprocess.Popen) -> int:
    """SIGTERM the launcher (it stops its stages in order); kill it if it does not end in 30 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # Its stages get SIGTERM from the kernel when it dies (PR_SET_PDEATHSIG in deploy/supervisor.py).
        proc.kill()
        return proc.wait()
