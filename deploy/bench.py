"""``python -m deploy bench``: how fast emostream is on this machine, next to the study's one-process loop.

Four measurements, all taken in one run so that their ratios share the machine's conditions (other
processes come and go on a small machine; absolute numbers drift between runs, ratios much less):

1. **Baseline** (:mod:`deploy.baseline`): the study's sequential loop on the video, frames/s.
2. **Stages standalone**, each in this one process on the same frames: decode (what a capture process
   does), detection (YuNet and Haar at the configured downscale, frames/s), the classifier at batch 1
   and batched (faces/s), the model's FLOPs and the machine's measured bf16 matmul peak.
3. **End to end**: the real pipeline under the launcher (``python -m deploy run``) for 1, 2 and 4
   cameras replaying the video at its own 25 fps, events read from the sink's PUB socket, drops read
   from every stage's ``/metrics``; plus one run with ``pacing: fast`` and ``drop_policy: block``,
   which measures the pipeline's maximum throughput.
4. **Output**: an aligned text table, a JSON file, a PNG plot.

How the ratios are defined is written into the JSON (``definitions``) next to the numbers.
Heavy imports (torch, matplotlib) happen inside the functions that need them, so registering this
subcommand costs ``python -m deploy run`` nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
import zmq

from capture.sources import DEFAULT_DECODE_THREADS
from deploy.baseline import merge_baselines, rate, run_baseline
from deploy.config import load_config
from deploy.plan import endpoints, metrics_ports
from emostream.runtime import tune_malloc

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_VIDEO = SHARED / "media" / "faces.mp4"
DEFAULT_YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
EXIT_MISSING = 2
#: Events still received this long after a window count as delivered (not as a gap in the frame
#: numbers): with several detector workers, frames of one camera can overtake each other.
GAP_GRACE_S = 1.0

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
    "classifier_share_of_peak": "model FLOPs/face (FlopCounterMode) x batched faces/s / measured bf16 matmul peak",
    "standalone rates": (
        "decode and detectors: median over chunks of 25 consecutive frames; classifier: every batch size "
        "measured in turn in each of several rounds, median over the rounds. A burst of other processes slows "
        "a few chunks or rounds and the median ignores them"
    ),
    "cpu_parallelism": "process CPU seconds / wall seconds during a standalone measurement (cores it kept busy)",
    "stage_capacity_fps": (
        "standalone fps x min(processes of that stage in the max-throughput run, cpu_count / max(1, "
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
        "cpu_count / sum of standalone CPU seconds per frame (decode + detector + classifier x faces/frame): "
        "the most any arrangement of these stages could do on this machine; ZeroMQ copies, the sink and "
        "the launcher come on top"
    ),
    "events_per_s": (
        "events received in the window / its length (a mean: in a pipeline a stall is followed by a catch-up "
        "burst, so per-second bins are not independent samples and their median would not be a throughput)"
    ),
    "what_if_fps": (
        "with --what-if NAME=VALUE: the max-throughput run again with only the stages' environment changed "
        "(no code or config change); what_if_over_max_throughput = what_if_fps / max_throughput_fps"
    ),
    "drops": "emostream_frames_dropped_total from every stage's /metrics: total at the end and delta in the window",
    "realtime runs": (
        "cameras replay the file at 25 fps with drop_policy drop_oldest, i.e. like live cameras that cannot "
        "wait: what the pipeline cannot take is dropped at capture and counted (reason overload)"
    ),
}


# -- settings ----------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """Everything a bench run measures with; :meth:`quick_settings` shrinks it to ~2-3 minutes."""

    video: Path = DEFAULT_VIDEO
    yunet: Path = DEFAULT_YUNET
    quick: bool = False
    cameras: tuple[int, ...] = (1, 2, 4)
    workers: int = 2
    fast_cameras: int = 2
    downscale: float = 0.5
    #: Full-resolution pixels, as in deploy/examples/three_cameras.yaml: the meeting video's far faces are small.
    min_face: int = 20
    #: detector.interval of the pipeline runs: detect on 1 frame in 3, track on the others (see interval_study).
    interval: int = 3
    #: OpenCV threads per detector worker: with 2 workers on 2 cores, more threads only contend.
    detector_threads: int = 1
    #: Detection intervals whose tracking quality is measured offline on the video's frames.
    intervals: tuple[int, ...] = (1, 2, 3, 4, 5)
    max_batch: int = 64
    max_wait_ms: float = 10.0
    baseline_frames: int | None = None  # per slice; None: the whole video
    #: The baseline runs twice (first and last step), each slice also capped at this many seconds.
    baseline_slice_s: float = 20.0
    stage_frames: int = 241
    chunk: int = 25
    batch1_faces: int = 400
    batched_batches: int = 40
    sweep: tuple[int, ...] = (8, 16, 32)
    classifier_rounds: int = 8
    classifier_max_s: float = 25.0
    matmul_size: int = 4096
    matmul_reps: int = 8
    matmul_threads: int = 2
    warmup_s: float = 5.0
    measure_s: float = 40.0
    startup_timeout_s: float = 120.0
    realtime_drop_policy: str = "drop_oldest"
    #: One more max-throughput run with these extra environment variables (none: skipped); see WHAT_IF.
    what_if_env: dict[str, str] | None = None

    def spec(self, cameras: int, pacing: str, drop_policy: str) -> PipelineSpec:
        """The pipeline of one end-to-end run under these settings."""
        return PipelineSpec(
            cameras=cameras,
            pacing=pacing,
            drop_policy=drop_policy,
            workers=self.workers,
            downscale=self.downscale,
            min_face=self.min_face,
            interval=self.interval,
            detector_threads=self.detector_threads,
            max_batch=self.max_batch,
            max_wait_ms=self.max_wait_ms,
        )

    @classmethod
    def quick_settings(cls, **overrides: Any) -> BenchSettings:
        base = cls(
            quick=True,
            baseline_frames=100,
            stage_frames=100,
            batch1_faces=150,
            batched_batches=16,
            sweep=(8, 32),
            classifier_rounds=4,
            classifier_max_s=10.0,
            baseline_slice_s=8.0,
            matmul_reps=4,
            measure_s=10.0,
        )
        return replace(base, **overrides)


@dataclass(frozen=True)
class PipelineSpec:
    """What one end-to-end run starts: ``cameras`` replays of the video and the stages' settings."""

    cameras: int
    pacing: str = "realtime"
    drop_policy: str = "drop_oldest"
    workers: int = 2
    downscale: float = 0.5
    min_face: int = 20
    interval: int = 1
    detector_threads: int = 1
    max_batch: int = 64
    max_wait_ms: float = 10.0
    #: network.shared_memory: frames to the detectors through /dev/shm (True) or over their sockets.
    shared_memory: bool = True

    @property
    def label(self) -> str:
        return f"{self.cameras}cam-{self.pacing}-{self.drop_policy}" + ("" if self.shared_memory else "-socket")


# -- progress ----------------------------------------------------------------------------------------


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


# -- standalone stages ---------------------------------------------------------------------------------


def read_frames(
    video: str | Path, max_frames: int, chunk: int = 25, decode_threads: int = DEFAULT_DECODE_THREADS
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Decode up to ``max_frames`` frames as a capture process does (grab, then retrieve, with its
    ``decode_threads``) and time it.

    Returns the decode throughput and the frames, which the detector measurements then reuse so that
    every stage sees the same pixels. The timed pass lets each frame go before the next, as a capture
    process does once it has sent it; keeping every frame would make each decode fault in fresh pages
    (~0.3 ms per 720p frame) that capture does not pay. A second, untimed pass keeps the frames.
    """

    def decode(keep: bool) -> tuple[list[float], list[np.ndarray], float, float, int]:
        params = [cv2.CAP_PROP_N_THREADS, decode_threads] if decode_threads else []
        cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            raise RuntimeError(f"OpenCV cannot open {video}")
        nominal_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        kept: list[np.ndarray] = []
        seconds: list[float] = []
        cpu0 = time.process_time()
        try:
            while len(seconds) < max_frames:
                t0 = time.perf_counter()
                if not cap.grab():
                    break
                ok, image = cap.retrieve()
                if not ok or image is None:
                    break
                seconds.append(time.perf_counter() - t0)
                if keep:
                    kept.append(image)
        finally:
            cap.release()
        return seconds, kept, time.process_time() - cpu0, nominal_fps, len(seconds)

    seconds, _, cpu_s, nominal_fps, count = decode(keep=False)
    _, frames, _, _, _ = decode(keep=True)
    if not frames:
        raise RuntimeError(f"{video} yielded no frames")
    summary = rate([1] * len(seconds), seconds, chunk)
    height, width = frames[0].shape[:2]
    return (
        {
            "fps": summary["per_s"],
            "mean_fps": summary["mean_per_s"],
            "frames": count,
            "seconds": summary["seconds"],
            "cpu_parallelism": cpu_s / summary["seconds"] if summary["seconds"] > 0 else 0.0,
            "cpu_s_per_frame": cpu_s / count,
            "resolution": [width, height],
            "video_fps": nominal_fps,
            "decode_threads": decode_threads,
        },
        frames,
    )


@contextlib.contextmanager
def opencv_threads(threads: int) -> Iterator[None]:
    """OpenCV's thread count set to ``threads`` (0: left as it is) inside the block, restored after."""
    previous = cv2.getNumThreads()
    if threads > 0:
        cv2.setNumThreads(threads)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)


def measure_detector(
    frames: Sequence[np.ndarray],
    backend: str,
    model_path: str | Path | None,
    downscale: float,
    min_face: int,
    chunk: int = 25,
    interval: int = 1,
    threads: int = 0,
) -> tuple[dict[str, Any], list[np.ndarray], list[np.ndarray]]:
    """A detector worker's per-frame work (``FaceExtractor.process``: downscale, detect, crop) on ``frames``.

    With ``interval`` N > 1 one frame in N is a key frame and the others reuse its boxes, as in the
    pipeline. ``threads``: OpenCV threads, as the pipeline's workers run (``detector.threads``; 0
    leaves OpenCV's default). Returns frames/s, the 48x48 crops it produced (the classifier is then
    measured on real faces) and the boxes of every frame.
    """
    from detector.pipeline import build_extractor
    from emostream.wire import Frame

    with opencv_threads(threads):
        extractor = build_extractor(backend, str(model_path) if model_path else None, 0.7, min_face, downscale)
        # One untimed frame: YuNet sets its input size and allocates its network on the first call.
        extractor.process(Frame(camera="bench", seq=0, ts_capture=0.0, image=frames[0]))
        seconds: list[float] = []
        crops: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        cpu0 = time.process_time()
        for seq, image in enumerate(frames):
            frame = Frame(camera="bench", seq=seq, ts_capture=0.0, image=image, key=seq % interval == 0)
            t0 = time.perf_counter()
            faces = extractor.process(frame)
            seconds.append(time.perf_counter() - t0)
            crops.append(faces.crops)
            boxes.append(faces.boxes)
        cpu_s = time.process_time() - cpu0
        summary = rate([1] * len(seconds), seconds, chunk)
        n_faces = sum(len(c) for c in crops)
        return (
            {
                "backend": backend,
                "downscale": downscale,
                "min_face": min_face,
                "interval": interval,
                "fps": summary["per_s"],
                "mean_fps": summary["mean_per_s"],
                "frames": len(frames),
                "faces_per_frame": n_faces / len(frames),
                "seconds": summary["seconds"],
                "cpu_parallelism": cpu_s / summary["seconds"] if summary["seconds"] > 0 else 0.0,
                "cpu_s_per_frame": cpu_s / len(frames),
                "opencv_threads": cv2.getNumThreads(),
            },
            crops,
            boxes,
        )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xywh boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(
        a[:, None, 0], b[None, :, 0]
    )
    iy = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(
        a[:, None, 1], b[None, :, 1]
    )
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def interval_study(
    detected: Sequence[np.ndarray], intervals: Sequence[int], iou_threshold: float = 0.5
) -> list[dict[str, Any]]:
    """How well a detection interval keeps the faces: ``detected`` holds the detector's boxes on every
    frame; with interval N frame i reuses the boxes of frame i - i % N (the pipeline's key-frame tracking).

    Per N: ``faces_kept`` = share of the detector's faces on the frames in between that a held box
    covers with IoU >= ``iou_threshold``; ``median_iou`` of each such face's best held box;
    ``held_unmatched`` = share of held boxes that match no detected face (a face that left); and the
    detector runs per frame, 1/N. N = 1 detects everything: 1.0 by definition. For scale: on adjacent
    frames the detector itself agrees with its previous frame about as well as N = 2 says.
    """
    study = []
    for n in intervals:
        matched = total = held_total = held_unmatched = 0
        ious: list[float] = []
        for i, boxes in enumerate(detected):
            if n <= 1 or i % n == 0:
                continue
            held = detected[i - i % n]
            total += len(boxes)
            held_total += len(held)
            if len(boxes) and len(held):
                iou = box_iou(boxes, held)
                best = iou.max(axis=1)
                matched += int((best >= iou_threshold).sum())
                ious.extend(best.tolist())
                held_unmatched += int((iou.max(axis=0) < iou_threshold).sum())
            else:
                ious.extend([0.0] * len(boxes))
                held_unmatched += len(held)
        study.append(
            {
                "interval": n,
                "detections_per_frame": 1.0 / n,
                "faces_kept": matched / total if total else 1.0,
                "median_iou": float(np.median(ious)) if ious else 1.0,
                "held_unmatched": held_unmatched / held_total if held_total else 0.0,
                "tracked_faces": total,
            }
        )
    return study


def count_flops_per_face(module: Any, input_size: tuple[int, int] = (48, 48), batch: int = 4) -> float:
    """FLOPs of one forward pass per face, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Counted in float32 on a small batch (the count does not depend on dtype or batch; per face it is
    exact). FlopCounterMode counts a multiply-add as 2 FLOPs, like the matmul peak below.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(batch, 1, *input_size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        module(x)
    return counter.get_total_flops() / batch


def measure_matmul_peak(size: int = 4096, reps: int = 8, threads: int = 2) -> dict[str, Any]:
    """The machine's bf16 matrix throughput: ``torch.matmul`` of two ``size`` x ``size`` bf16 matrices.

    Reported as the best repetition (``gflops``), since other processes can only ever slow one down:
    the fastest is the closest to what the hardware does. The median is kept alongside.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, dtype=torch.bfloat16)
        b = torch.randn(size, size, dtype=torch.bfloat16)
        for _ in range(2):  # oneDNN/AMX set-up and page faults: not part of the peak
            torch.matmul(a, b)
        rates = []
        for _ in range(max(1, reps)):
            t0 = time.perf_counter()
            torch.matmul(a, b)
            rates.append(2.0 * size**3 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(previous)
    return {
        "gflops": max(rates),
        "median_gflops": statistics.median(rates),
        "size": size,
        "reps": len(rates),
        "threads": threads,
        "dtype": "bfloat16",
    }


def measure_classifier(
    crops: np.ndarray,
    model_path: str | Path | None = None,
    max_batch: int = 64,
    batch1_faces: int = 400,
    batched_batches: int = 40,
    sweep: Sequence[int] = (8, 16, 32),
    rounds: int = 8,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """The serving model (``EmotionModel``: bf16 autocast, channels-last) at batch 1, ``max_batch`` and ``sweep``,
    and at ``max_batch`` served with flip test-time augmentation (``classifier.tta: flip``).

    ``crops`` are real uint8 48x48 faces from the detector; batches cycle through them. The sizes are
    interleaved: each of ``rounds`` rounds times every size in turn (batch 1 on ``batch1_faces /
    rounds`` faces, every other size on about ``batched_batches x max_batch / rounds`` faces) and a
    size's rate is its median over the rounds. Why: a burst of other processes then hits every size
    alike instead of whichever was being measured at that moment, so the batched/batch-1 ratio holds
    up on a busy machine. ``max_seconds`` ends it after the round that passes it (two rounds at
    least), so a slowed-down machine cannot stretch the bench.
    """
    import torch

    from classifier.model import EmotionModel

    if len(crops) == 0:
        raise ValueError("no face crops to classify (the detector found no face in the frames)")
    model = EmotionModel(model_path, device="cpu", bf16=True)
    flip_model = EmotionModel(model_path, device="cpu", bf16=True, tta="flip")
    sizes = sorted({1, max_batch, *sweep})
    n = len(crops)
    for size in sizes:  # untimed: oneDNN builds its kernels for each new input shape
        model.predict(crops[np.arange(size) % n])
    flip_model.predict(crops[np.arange(max_batch) % n])
    per_round: dict[int, list[float]] = {size: [] for size in sizes}
    flip_rates: list[float] = []
    batched_cpu = batched_wall = 0.0
    batched_faces = 0
    offset = 0

    def timed_calls(serving: EmotionModel, size: int, calls: int) -> float:
        """Wall seconds inside ``calls`` predictions of ``size`` crops each (the next crops in turn)."""
        nonlocal offset
        wall = 0.0
        for _ in range(calls):
            x = np.ascontiguousarray(crops[(offset + np.arange(size)) % n])
            offset += size
            t0 = time.perf_counter()
            serving.predict(x)
            wall += time.perf_counter() - t0
        return wall

    started = time.perf_counter()
    done = 0
    for _ in range(max(1, rounds)):
        if max_seconds is not None and done >= 2 and time.perf_counter() - started > max_seconds:
            break
        done += 1
        for size in sizes:
            faces = batch1_faces if size == 1 else batched_batches * max_batch
            calls = max(1, round(faces / rounds / size))
            cpu0 = time.process_time()
            wall = timed_calls(model, size, calls)
            cpu = time.process_time() - cpu0
            per_round[size].append(calls * size / wall)
            if size == max_batch:
                batched_cpu += cpu
                batched_wall += wall
                batched_faces += calls * size
        calls = max(1, round(batched_batches / rounds))
        flip_rates.append(calls * max_batch / timed_calls(flip_model, max_batch, calls))
    by_batch = {size: statistics.median(rates) for size, rates in per_round.items()}
    flops = count_flops_per_face(model.module, tuple(model.info.input_size))
    batch1, batched = by_batch[1], by_batch[max_batch]
    return {
        "model": str(model.path),
        "model_version": model.version,
        "arch": model.info.arch,
        "bf16": True,
        "channels_last": True,
        "torch_threads": torch.get_num_threads(),
        "crops": int(n),
        "max_batch": max_batch,
        "rounds": done,
        "batch1_faces_per_s": batch1,
        "batched_faces_per_s": batched,
        "batched_over_batch1": batched / batch1 if batch1 > 0 else 0.0,
        "faces_per_s_by_batch": by_batch,
        "tta_flip_faces_per_s": statistics.median(flip_rates),
        "flops_per_face": flops,
        "batched_gflops": batched * flops / 1e9,
        "batch1_gflops": batch1 * flops / 1e9,
        "cpu_parallelism": batched_cpu / batched_wall if batched_wall > 0 else 0.0,
        "cpu_s_per_face": batched_cpu / batched_faces if batched_faces else 0.0,
    }


# -- end to end ----------------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def allocate_ports(cameras: int, workers: int, attempts: int = 200) -> tuple[int, int, int]:
    """``(network.base_port, sink publish port, metrics.base_port)`` whose every port is free right now.

    Chosen below Linux's ephemeral range (32768+) so that outgoing connections of other processes on
    this machine do not take them meanwhile; checked port by port, as laid out by deploy/plan.py.
    """
    import random

    rng = random.Random()
    for _ in range(attempts):
        net = rng.randrange(10_000, 32_000 - 400)
        publish = net + 2  # base+2..base+49 are unused by the internal layout
        metrics = net + 200
        used = [net, net + 1, publish, *(net + 50 + i for i in range(cameras))]
        used += [metrics, metrics + 1, metrics + 2, *(metrics + 10 + i for i in range(workers))]
        used += [metrics + 100 + i for i in range(cameras)]
        if all(_port_free(p) for p in used):
            return net, publish, metrics
    raise RuntimeError("no free port range found for the pipeline")


def pipeline_config(video: str | Path, yunet: str | Path, spec: PipelineSpec) -> dict[str, Any]:
    """The launcher config of one end-to-end run, with free ports for every endpoint and /metrics."""
    net, publish, metrics = allocate_ports(spec.cameras, spec.workers)
    return {
        "cameras": [
            {
                "id": f"cam{i}",
                "source": str(video),
                "loop": True,
                "pacing": spec.pacing,
                "drop_policy": spec.drop_policy,
            }
            for i in range(spec.cameras)
        ],
        "detector": {
            "workers": spec.workers,
            "backend": "yunet",
            "model": str(yunet),
            "downscale": spec.downscale,
            "min_face": spec.min_face,
            "interval": spec.interval,
            "threads": spec.detector_threads,
        },
        "classifier": {"max_batch": spec.max_batch, "max_wait_ms": spec.max_wait_ms, "device": "cpu"},
        "sink": {"publish": f"tcp://127.0.0.1:{publish}"},
        "network": {"base_port": net, "shared_memory": spec.shared_memory},
        "metrics": {"base_port": metrics},
    }


def _scrape(port: int, timeout: float = 3.0) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


_STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


def _stage_pids(log_text: str) -> dict[str, int]:
    """The latest pid of every stage, from the launcher's "started NAME (pid N)" lines."""
    return {name: int(pid) for name, pid in _STARTED.findall(log_text)}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (all its threads), from /proc; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the ")" that ends the command name, utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs together since boot, from /proc/stat; None without /proc."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    total = sum(values)
    return total - values[3] - values[4], total


def busy_cores(before: tuple[int, int] | None, after: tuple[int, int] | None, cpus: int) -> float | None:
    """Cores the whole machine kept busy between two :func:`machine_ticks` readings."""
    if not before or not after or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * cpus


class CpuWatch:
    """Cores busy on the whole machine, in this process, and in every other process, over a ``with`` block.

    Why: other processes share this small machine; the JSON then says how much of it they took while
    each standalone number was measured, which is what a reader needs to judge that number.
    """

    def __enter__(self) -> CpuWatch:
        self.cpus = os.cpu_count() or 1
        self._wall = time.perf_counter()
        self._own = time.process_time()
        self._ticks = machine_ticks()
        self.result: dict[str, float | None] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        own = (time.process_time() - self._own) / wall if wall > 0 else 0.0
        machine = busy_cores(self._ticks, machine_ticks(), self.cpus)
        self.result = {
            "machine_busy_cores": machine,
            "own_cores": own,
            "other_processes_cores": max(0.0, machine - own) if machine is not None else None,
        }


@dataclass
class Snapshot:
    """Every stage's /metrics and CPU seconds, and the machine's CPU ticks, at one moment."""

    at: float = 0.0
    samples: dict[str, list[tuple[str, dict[str, str], float]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    ticks: tuple[int, int] | None = None


def take_snapshot(ports: dict[str, int], pids: dict[str, int]) -> Snapshot:
    snap = Snapshot(at=time.time(), ticks=machine_ticks())
    for name, pid in pids.items():
        cpu = _cpu_seconds(pid)
        if cpu is not None:
            snap.cpu[name] = cpu
    for name, port in ports.items():
        try:
            snap.samples[name] = _scrape(port)
        except Exception as exc:  # noqa: BLE001 - a stage that is down raises URLError, timeouts, resets
            snap.errors[name] = repr(exc)
    return snap


def _sum_samples(snap: Snapshot, name: str, **labels: str) -> float:
    return sum(
        value
        for samples in snap.samples.values()
        for sample, sl, value in samples
        if sample == name and all(sl.get(k) == v for k, v in labels.items())
    )


def _drops(snap: Snapshot) -> dict[tuple[str, str, str], float]:
    """emostream_frames_dropped_total by (stage, camera, reason), summed over the processes serving it."""
    out: dict[tuple[str, str, str], float] = defaultdict(float)
    for samples in snap.samples.values():
        for sample, labels, value in samples:
            if sample == "emostream_frames_dropped_total":
                out[(labels.get("stage", "?"), labels.get("camera", "?"), labels.get("reason", "?"))] += value
    return dict(out)


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not len(values):
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(values) * 1000.0, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99)}


def _seq_gaps(window_frames: Sequence[int], delivered: set[int]) -> int:
    """Frame numbers between the first and last frame of the window that were never delivered.

    ``delivered`` holds every frame number received in the whole run (before the window and up to
    GAP_GRACE_S after it), so frames reordered across the window's edges are not counted: what is
    left are frames lost after capture numbered them (a drop_oldest capture's overload drops).
    """
    if not window_frames:
        return 0
    first, last = min(window_frames), max(window_frames)
    return sum(1 for f in range(first, last + 1) if f not in delivered)


Record = tuple[float, str, int, float, float, int]


def timeline(records: Sequence[Record], origin: float, bin_s: float = 1.0) -> list[dict[str, float]]:
    """Events/s and p50/max latency per ``bin_s`` from ``origin``: shows whether warm-up was long enough."""
    bins: dict[int, list[float]] = defaultdict(list)
    for received, _cam, _frame, ts_capture, ts_event, _faces in records:
        bins[int((received - origin) // bin_s)].append(ts_event - ts_capture)
    return [
        {
            "t_s": k * bin_s,
            "events_per_s": len(v) / bin_s,
            "p50_ms": float(np.median(v) * 1000),
            "max_ms": float(max(v) * 1000),
        }
        for k, v in sorted(bins.items())
    ]


def summarize_run(
    all_records: Sequence[Record],
    window_start: float,
    window_s: float,
    start: Snapshot | None,
    end: Snapshot | None,
) -> dict[str, Any]:
    """Per-run numbers from the events received in the window and the two /metrics + CPU snapshots.

    ``all_records``: (received at, camera, frame, ts_capture, ts_event, faces) per event since the
    first one; only those received in [window_start, window_start + window_s) count, the others
    appear in the timeline only.
    """
    records = [r for r in all_records if window_start <= r[0] < window_start + window_s]
    per_camera: dict[str, list[int]] = defaultdict(list)
    for _, camera, frame, *_ in records:
        per_camera[camera].append(frame)
    events = len(records)
    result: dict[str, Any] = {
        "events": events,
        "window_s": window_s,
        "events_per_s": events / window_s if window_s > 0 else 0.0,
        "per_camera_events_per_s": {c: len(f) / window_s for c, f in sorted(per_camera.items())},
        "faces_per_frame": sum(r[5] for r in records) / events if events else 0.0,
        "latency_ms": _percentiles([r[4] - r[3] for r in records]),
        "sink_latency_ms": _percentiles([r[0] - r[3] for r in records]),
        "seq_gaps": sum(
            _seq_gaps(frames, {r[2] for r in all_records if r[1] == camera}) for camera, frames in per_camera.items()
        ),
        "timeline": timeline(all_records, all_records[0][0]) if all_records else [],
    }
    if end is not None:
        total = _drops(end)
        before = _drops(start) if start is not None else {}
        result["drops_total"] = [
            {"stage": s, "camera": c, "reason": r, "frames": v} for (s, c, r), v in sorted(total.items()) if v
        ]
        by_stage: dict[str, float] = defaultdict(float)
        for (s, _c, r), v in total.items():
            delta = v - before.get((s, _c, r), 0.0)
            if delta:
                by_stage[f"{s}/{r}"] += delta
        result["drops_in_window"] = dict(sorted(by_stage.items()))
        result["drop_series"] = len(total)  # series read, zero or not: proof the counters were scraped
        result["metrics_scraped"] = sorted(end.samples)
        result["metrics_errors"] = end.errors
        if start is not None:

            def delta(name: str, **labels: str) -> float:
                return _sum_samples(end, name, **labels) - _sum_samples(start, name, **labels)

            batches = delta("emostream_classifier_batch_size_count")
            det = delta("emostream_stage_seconds_count", stage="detector")
            cls = delta("emostream_stage_seconds_count", stage="classifier")
            result["classifier_mean_batch"] = delta("emostream_classifier_batch_size_sum") / batches if batches else 0.0
            frames_detected = delta("emostream_frames_total", stage="detector")
            result["detections_per_frame"] = (
                delta("emostream_detections_total") / frames_detected if frames_detected else None
            )
            result["detector_ms_per_frame"] = (
                1000 * delta("emostream_stage_seconds_sum", stage="detector") / det if det else 0.0
            )
            result["classifier_ms_per_call"] = (
                1000 * delta("emostream_stage_seconds_sum", stage="classifier") / cls if cls else 0.0
            )
            wall = end.at - start.at
            cores: dict[str, float] = defaultdict(float)
            for name, cpu in end.cpu.items():
                if name in start.cpu and wall > 0:
                    cores[name.split("-")[0]] += (cpu - start.cpu[name]) / wall
            result["cpu_cores_by_stage"] = dict(sorted(cores.items()))
            machine = busy_cores(start.ticks, end.ticks, os.cpu_count() or 1)
            result["machine_busy_cores"] = machine
            # Everything busy that is neither a pipeline stage nor this bench: other people's work.
            result["other_processes_cores"] = max(0.0, machine - sum(cores.values())) if machine is not None else None
    return result


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
) -> dict[str, Any]:
    """Run the real pipeline under the launcher and measure it from the outside, as a user would.

    ``env``: extra environment variables for the launcher and so for every stage (e.g. thread counts),
    which lets the bench try a what-if without touching the pipeline's code or config.

    Events come from a SUB socket on the sink's publish endpoint; the window opens ``warmup_s`` after
    the first event (model loading and the first frames' one-off costs stay out) and lasts
    ``measure_s``. Every stage's /metrics and CPU time are read when the window opens and closes;
    then the launcher gets SIGTERM. ``--duration`` is only a safety net: should this process die,
    the launcher still stops by itself.
    """
    config = pipeline_config(video, yunet, spec)
    own_dir = None
    if workdir is None:
        own_dir = tempfile.TemporaryDirectory(prefix="emostream-bench-")
        workdir = own_dir.name
    workdir = Path(workdir)
    label = spec.label + "".join(f"-{k}={v}" for k, v in (env or {}).items())
    config_path = workdir / f"pipeline-{label}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    parsed = load_config(config_path)  # the launcher's own validation, and its port layout
    ports = metrics_ports(parsed)
    publish = endpoints(parsed).events
    log_path = workdir / f"launcher-{label}.log"
    safety_duration = startup_timeout_s + warmup_s + measure_s + 30.0

    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 0)  # never lose events on our side: the count is the measurement
    sub.connect(publish)  # before the sink binds: ZeroMQ connects once it is there
    records: list[Record] = []
    snapshots: dict[str, Snapshot] = {}
    error: str | None = None
    launched = time.time()
    first_at: float | None = None
    window_start = window_end = float("inf")
    threads: dict[str, threading.Thread] = {}

    def snapshot_in_background(name: str) -> None:
        # In a thread: scraping ~10 ports takes tens of ms, during which our receive times (the
        # sink-side latency) would otherwise stall.
        pids = {**_stage_pids(log_path.read_text()), "launcher": proc.pid, "bench": os.getpid()}
        threads[name] = threading.Thread(
            target=lambda: snapshots.__setitem__(name, take_snapshot(ports, pids)), daemon=True
        )
        threads[name].start()

    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy", "run", "--config", str(config_path)]
            + ["--duration", f"{safety_duration:.0f}", "--quiet"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    try:
        while True:
            now = time.time()
            if now >= window_end + GAP_GRACE_S:
                break
            if first_at is None and now - launched > startup_timeout_s:
                error = f"no event within {startup_timeout_s:.0f} s of starting the launcher"
                break
            if proc.poll() is not None:
                error = f"the launcher exited early with code {proc.returncode}"
                break
            if "start" not in threads and now >= window_start:
                snapshot_in_background("start")
            if "end" not in threads and now >= window_end:
                snapshot_in_background("end")
            if not sub.poll(50):
                continue
            while True:
                try:
                    parts = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                received = time.time()
                event = json.loads(parts[1])
                if event.get("type") != "faces":
                    continue
                if first_at is None:
                    first_at = received
                    window_start = first_at + warmup_s
                    window_end = window_start + measure_s
                records.append(
                    (
                        received,
                        event["camera"],
                        int(event["frame"]),
                        float(event["ts_capture"]),
                        float(event["ts_event"]),
                        len(event["faces"]),
                    )
                )
        for thread in threads.values():
            thread.join(timeout=30)
    finally:
        sub.close()
        code = _stop(proc)
    result = summarize_run(records, window_start, measure_s, snapshots.get("start"), snapshots.get("end"))
    result.update(
        {
            "label": label,
            "cameras": spec.cameras,
            "pacing": spec.pacing,
            "drop_policy": spec.drop_policy,
            "workers": spec.workers,
            "interval": spec.interval,
            "shared_memory": spec.shared_memory,
            "offered_fps": 25.0 * spec.cameras if spec.pacing == "realtime" else None,
            "warmup_s": warmup_s,
            "startup_s": (first_at - launched) if first_at else None,
            "launcher_exit_code": code,
            "env": dict(env or {}),
            "error": error,
            "config": config,
        }
    )
    if error:
        result["log_tail"] = log_path.read_text()[-3000:]
    if own_dir is not None:
        own_dir.cleanup()
    return result


def _stop(proc: subprocess.Popen) -> int:
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


# -- derived numbers -----------------------------------------------------------------------------------


def stage_capacity(fps: float, parallelism: float, processes: int, cpu_count: int) -> float:
    """Frames/s ``processes`` copies of a stage can reach: see DEFINITIONS["stage_capacity_fps"]."""
    return fps * min(processes, cpu_count / max(1.0, parallelism))


def derive(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers and ratios, computed from the raw measurements in ``results`` only.

    Expects ``baseline``, ``stages`` (decode, detector_yunet), ``classifier``, ``peak``, ``runs``,
    ``max_throughput``, ``settings`` (workers, fast_cameras) and ``machine`` (cpu_count). Kept pure
    (no measuring) so that tests can check the arithmetic on fixed numbers.
    """
    cpus = int(results["machine"]["cpu_count"])
    settings = results["settings"]
    baseline_fps = float(results["baseline"]["fps"])
    out: dict[str, Any] = {"baseline_fps": baseline_fps}

    ok_runs = [r for r in results.get("runs", []) if not r.get("error") and r.get("events")]
    best = max(ok_runs, key=lambda r: r["events_per_s"], default=None)
    out["end_to_end_fps"] = best["events_per_s"] if best else 0.0
    out["end_to_end_cameras"] = best["cameras"] if best else None
    out["p50_latency_ms"] = best["latency_ms"]["p50"] if best else None
    out["p99_latency_ms"] = best["latency_ms"]["p99"] if best else None
    out["end_to_end_over_baseline"] = out["end_to_end_fps"] / baseline_fps if baseline_fps else None

    fast = results.get("max_throughput") or {}
    max_fps = fast["events_per_s"] if fast and not fast.get("error") and fast.get("events") else None
    out["max_throughput_fps"] = max_fps
    out["max_throughput_over_baseline"] = max_fps / baseline_fps if max_fps and baseline_fps else None

    socket = results.get("max_throughput_socket") or {}
    socket_fps = socket["events_per_s"] if socket and not socket.get("error") and socket.get("events") else None
    out["socket_fps"] = socket_fps
    out["shared_memory_over_socket"] = max_fps / socket_fps if max_fps and socket_fps else None

    what_if = results.get("what_if") or {}
    wi_fps = what_if["events_per_s"] if what_if and not what_if.get("error") and what_if.get("events") else None
    out["what_if_env"] = what_if.get("env")
    out["what_if_fps"] = wi_fps
    out["what_if_p99_latency_ms"] = what_if["latency_ms"]["p99"] if wi_fps else None
    out["what_if_over_max_throughput"] = wi_fps / max_fps if wi_fps and max_fps else None

    cls = results["classifier"]
    out["classifier_faces_per_s"] = cls["batched_faces_per_s"]
    out["classifier_batch1_faces_per_s"] = cls["batch1_faces_per_s"]
    out["classifier_batched_over_batch1"] = (
        cls["batched_faces_per_s"] / cls["batch1_faces_per_s"] if cls["batch1_faces_per_s"] else None
    )
    peak = results["peak"]["gflops"]
    out["classifier_tta_flip_faces_per_s"] = cls.get("tta_flip_faces_per_s")
    out["classifier_gflops"] = cls["batched_faces_per_s"] * cls["flops_per_face"] / 1e9
    out["bf16_peak_gflops"] = peak
    out["classifier_share_of_peak"] = out["classifier_gflops"] / peak if peak else None

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
    out["stage_standalone_fps"] = standalone
    out["stage_processes"] = processes
    out["stage_capacity_fps"] = capacity
    slowest = min(capacity, key=capacity.get)
    out["slowest_stage"] = slowest
    out["pipeline_over_slowest_stage"] = max_fps / capacity[slowest] if max_fps else None
    out["pipeline_over_slowest_stage_unscaled"] = max_fps / min(standalone.values()) if max_fps else None
    cpu_per_frame = {
        "decode": decode["cpu_s_per_frame"],
        "detector": det["cpu_s_per_frame"],
        "classifier": cls["cpu_s_per_face"] * faces_per_frame,
    }
    out["cpu_s_per_frame_by_stage"] = cpu_per_frame
    budget = cpus / sum(cpu_per_frame.values()) if sum(cpu_per_frame.values()) > 0 else None
    out["cpu_budget_fps"] = budget
    out["pipeline_over_cpu_budget"] = max_fps / budget if max_fps and budget else None
    out["detector_interval"] = int(det.get("interval", 1))
    study = {row["interval"]: row for row in results.get("interval_study", [])}
    out["faces_kept_at_interval"] = (
        study[out["detector_interval"]]["faces_kept"] if study.get(out["detector_interval"]) else None
    )
    return out


# -- output --------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


def align(
    header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ", left: Sequence[int] = (0,)
) -> list[str]:
    """Rows as aligned text columns: the ``left`` columns (text) left-aligned, the others (numbers) right-aligned."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def _drops_text(run: dict[str, Any]) -> str:
    drops = run.get("drops_in_window") or {}
    return ", ".join(f"{k} {v:,.0f}" for k, v in drops.items()) or "none"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}x"


def _others(entry: dict[str, Any]) -> str:
    """Cores other processes kept busy while ``entry`` was measured (see :class:`CpuWatch`)."""
    watch = entry.get("cpu_watch") or {}
    return _fmt(watch.get("other_processes_cores", entry.get("other_processes_cores")), 2)


#: Cores of other processes above which a measurement is flagged as disturbed in the report.
NOISY_CORES = 0.5


def noisy_steps(results: dict[str, Any]) -> list[str]:
    """Names of the measurements during which other processes kept more than NOISY_CORES cores busy."""
    entries: list[tuple[str, dict[str, Any]]] = [
        (f"baseline slice {i + 1}", sl) for i, sl in enumerate(results["baseline"].get("slices", []))
    ]
    entries += [(name, entry) for name, entry in results.get("stages", {}).items()]
    entries += [("classifier", results.get("classifier", {})), ("matmul peak", results.get("peak", {}))]
    entries += [(_run_name(r), r) for r in all_runs(results) if not r.get("error")]
    out = []
    for name, entry in entries:
        watch = entry.get("cpu_watch") or {}
        others = watch.get("other_processes_cores", entry.get("other_processes_cores"))
        if others is not None and others > NOISY_CORES:
            out.append(f"{name} ({others:.1f})")
    return out


def all_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every end-to-end run of the bench in the order they ran (those that did run)."""
    extra = [results.get(key) for key in ("max_throughput", "max_throughput_socket", "what_if")]
    return [r for r in [*results.get("runs", []), *extra] if r]


def _run_name(run: dict[str, Any]) -> str:
    name = f"{run['cameras']} cam {run['pacing']}" + (" block" if run["drop_policy"] == "block" else "")
    if run.get("shared_memory") is False:
        name += " socket"
    return name + "".join(f" {k}={v}" for k, v in (run.get("env") or {}).items())


def format_report(results: dict[str, Any]) -> str:
    """The printed summary: aligned text tables of every measurement and the headline ratios."""
    h = results["headline"]
    what_if_rows = []
    if h.get("what_if_env"):  # only with --what-if
        env = " ".join(f"{k}={v}" for k, v in h["what_if_env"].items())
        what_if_rows = [
            [f"what_if_fps ({env})", _fmt(h.get("what_if_fps"))],
            ["what_if_over_max_throughput", _ratio(h.get("what_if_over_max_throughput"))],
        ]
    m = results["machine"]
    s = results["settings"]
    b = results["baseline"]
    st = results["stages"]
    cls = results["classifier"]
    quick = " --quick" if s.get("quick") else ""
    lines = [
        f"emostream bench{quick}: {m['cpu_count']} CPUs ({m.get('cpu_model', '?')}), torch {m['torch']}, "
        f"OpenCV {m['opencv']}; every number below was measured side by side in this run.",
        "'others' = CPU cores other processes on this machine kept busy meanwhile (noise indicator).",
        "",
        "Baseline: the study's loop in one process (decode -> Haar full res 1.3/5 -> 48x48 crop -> model b1 fp32)",
    ]
    share = b.get("share_by_part", {})
    rows = [
        [f"slice {i + 1}", _fmt(sl["fps"]), str(sl["frames"]), "", "", "", "", "", _others(sl)]
        for i, sl in enumerate(b.get("slices", []))
    ]
    rows.append(
        [
            "baseline (median)",
            _fmt(b["fps"]),
            str(b["frames"]),
            _fmt(b["faces_per_frame"], 2),
            *(f"{100 * share.get(k, 0):.0f}%" for k in ("decode", "detect", "crop", "classify")),
            "" if b.get("slices") else _others(b),
        ]
    )
    lines += align(["", "frames/s", "frames", "faces/frame", "decode", "detect", "crop", "classify", "others"], rows)
    lines += ["", "Stages standalone (this process, same frames; rate = median over chunks)"]
    rows = [["decode (capture)", _fmt(st["decode"]["fps"]), "frames/s", _fmt(st["decode"]["cpu_parallelism"], 2)]]
    rows[0] += ["-", _others(st["decode"])]
    for key, name in (("detector_yunet", "YuNet"), ("detector_yunet_tracked", "YuNet"), ("detector_haar", "Haar")):
        d = st.get(key)
        if d:
            every = f", interval {d['interval']}" if d.get("interval", 1) > 1 else ""
            rows.append(
                [
                    f"detector {name} {d['downscale']:g}x{every}",
                    _fmt(d["fps"]),
                    "frames/s",
                    _fmt(d["cpu_parallelism"], 2),
                    _fmt(d["faces_per_frame"], 2),
                    _others(d),
                ]
            )
    for size, value in cls["faces_per_s_by_batch"].items():
        last = int(size) == int(cls["max_batch"])
        rows.append(
            [
                f"classifier bf16 batch {size}",
                _fmt(value),
                "faces/s",
                _fmt(cls["cpu_parallelism"], 2) if last else "",
                "",
                _others(cls) if last else "",
            ]
        )
    if cls.get("tta_flip_faces_per_s"):
        label = f"classifier bf16 batch {cls['max_batch']}, tta flip"
        rows.append([label, _fmt(cls["tta_flip_faces_per_s"]), "faces/s", "", "", ""])
    lines += align(["stage", "rate", "unit", "cores used", "faces/frame", "others"], rows)
    study = results.get("interval_study") or []
    if study:
        lines += ["", "Detection interval: YuNet on 1 frame in N, its boxes held on the others (same frames)"]
        lines += align(
            ["interval", "detections/frame", "faces kept (IoU>=0.5)", "median IoU", "held boxes unmatched"],
            [
                [
                    str(row["interval"]),
                    _fmt(row["detections_per_frame"], 2),
                    f"{100 * row['faces_kept']:.1f}%",
                    _fmt(row["median_iou"], 2),
                    f"{100 * row['held_unmatched']:.1f}%",
                ]
                for row in study
            ],
        )
    lines += [
        "",
        f"  classifier batched/batch-1 {_ratio(h['classifier_batched_over_batch1'])}; "
        f"{cls['flops_per_face'] / 1e9:.3f} GFLOP/face x {_fmt(h['classifier_faces_per_s'], 0)} faces/s = "
        f"{_fmt(h['classifier_gflops'])} GFLOP/s,",
        f"  {100 * (h['classifier_share_of_peak'] or 0):.0f}% of this machine's measured bf16 matmul peak "
        f"({_fmt(h['bf16_peak_gflops'], 0)} GFLOP/s on {results['peak']['threads']} threads)",
        "",
        f"End to end: python -m deploy run, YuNet {s['downscale']:g}x at interval {s.get('interval', 1)}, "
        f"{s['workers']} detector workers, max_batch {s['max_batch']}; {s['warmup_s']:g} s warm-up, "
        f"then {s['measure_s']:g} s measured",
    ]
    runs = all_runs(results)
    rows = []
    for run in runs:
        if run.get("error"):
            rows.append([_run_name(run), "-", "-", "-", "-", "-", "-", "-", "-", "FAILED: " + run["error"][:50]])
            continue
        lat, sink = run["latency_ms"], run["sink_latency_ms"]
        rows.append(
            [
                _run_name(run),
                _fmt(run["offered_fps"]),
                _fmt(run["events_per_s"]),
                _fmt(run["faces_per_frame"], 2),
                _fmt(lat["p50"], 0),
                _fmt(lat["p95"], 0),
                _fmt(lat["p99"], 0),
                _fmt(sink["p99"], 0),
                _fmt(run.get("classifier_mean_batch"), 1),
                _drops_text(run),
            ]
        )
    header = ["run", "offered", "events/s", "faces/fr", "p50 ms", "p95 ms", "p99 ms", "sink p99", "batch"]
    lines += align([*header, "drops in window (stage/reason)"], rows, left=(0, len(header)))
    rows = []
    for run in runs:
        if run.get("error"):
            continue
        cores = run.get("cpu_cores_by_stage", {})
        rows.append(
            [
                _run_name(run),
                *(_fmt(cores.get(k), 2) for k in ("capture", "detector", "classifier", "sink", "launcher")),
                _others(run),
                _fmt(run.get("detector_ms_per_frame"), 1),
                _fmt(run.get("classifier_ms_per_call"), 1),
            ]
        )
    lines += [
        "",
        "  CPU cores per stage in the window (/proc), ms per detector frame and per classifier batch (/metrics)",
    ]
    header = ["run", "capture", "detector", "classifier", "sink", "launcher", "others", "det ms", "cls ms"]
    lines += align(header, rows, indent="    ")
    busy = noisy_steps(results)
    if busy:
        lines += [
            "",
            f"NOTE: other processes kept more than {NOISY_CORES:g} cores busy during: {', '.join(busy)}.",
            "  Those numbers are depressed; ratios within one step (batched/batch-1, runs against each other) hold",
            "  up better than ratios across steps measured at different moments.",
        ]
    cap = h["stage_capacity_fps"]
    lines += [
        "",
        "Headline",
        *align(
            ["", "value"],
            [
                ["baseline_fps", _fmt(h["baseline_fps"])],
                [f"end_to_end_fps ({h['end_to_end_cameras']} cameras, realtime)", _fmt(h["end_to_end_fps"])],
                ["end_to_end_over_baseline", _ratio(h["end_to_end_over_baseline"])],
                ["p50 / p99 latency ms (that run)", f"{_fmt(h['p50_latency_ms'], 0)} / {_fmt(h['p99_latency_ms'], 0)}"],
                ["max_throughput_fps (fast, block)", _fmt(h["max_throughput_fps"])],
                ["max_throughput_over_baseline", _ratio(h["max_throughput_over_baseline"])],
                ["socket_fps (the same, frames over sockets)", _fmt(h.get("socket_fps"))],
                ["shared_memory_over_socket", _ratio(h.get("shared_memory_over_socket"))],
                [f"classifier_faces_per_s (batch {s['max_batch']})", _fmt(h["classifier_faces_per_s"], 0)],
                ["classifier_batched_over_batch1", _ratio(h["classifier_batched_over_batch1"])],
                [
                    "classifier_tta_flip_faces_per_s (the same, tta flip)",
                    _fmt(h.get("classifier_tta_flip_faces_per_s"), 0),
                ],
                [
                    "stage capacity fps: decode / detector / classifier",
                    " / ".join(_fmt(cap[k]) for k in ("decode", "detector", "classifier")),
                ],
                [f"pipeline_over_slowest_stage ({h['slowest_stage']})", _fmt(h["pipeline_over_slowest_stage"], 2)],
                ["cpu_budget_fps", _fmt(h["cpu_budget_fps"])],
                ["pipeline_over_cpu_budget", _fmt(h["pipeline_over_cpu_budget"], 2)],
                [
                    "detector interval / faces kept at it",
                    f"{h.get('detector_interval', 1)} / "
                    + (f"{100 * h['faces_kept_at_interval']:.1f}%" if h.get("faces_kept_at_interval") else "-"),
                ],
                *what_if_rows,
            ],
        ),
    ]
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value


def write_json(results: dict[str, Any], path: str | Path) -> Path:
    """``results`` with the headline keys at the top level (what dashboards and diffs read first)."""
    doc = {**results["headline"], **{k: v for k, v in results.items() if k != "headline"}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    return path


def write_plot(results: dict[str, Any], path: str | Path) -> Path:
    """Aggregate throughput and p50/p99 latency against camera count, baseline as a horizontal line."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((r for r in results.get("runs", []) if not r.get("error")), key=lambda r: r["cameras"])
    cams = [r["cameras"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(cams, [r["events_per_s"] for r in runs], "o-", label="emostream, aggregate events/s")
    ax1.plot(cams, [r["offered_fps"] for r in runs], "--", color="grey", label="offered (25 fps per camera)")
    baseline = results["headline"]["baseline_fps"]
    ax1.axhline(baseline, color="tab:red", label=f"baseline, study loop ({baseline:.1f})")
    max_fps = results["headline"].get("max_throughput_fps")
    if max_fps:
        ax1.axhline(max_fps, color="tab:green", linestyle=":", label=f"max throughput, fast + block ({max_fps:.1f})")
    what_if = results["headline"].get("what_if_fps")
    if what_if:
        env = " ".join(f"{k}={v}" for k, v in (results["headline"].get("what_if_env") or {}).items())
        ax1.axhline(what_if, color="tab:purple", linestyle="-.", label=f"what-if {env}, fast + block ({what_if:.1f})")
    ax1.set_xlabel("cameras")
    ax1.set_ylabel("frames/s (all cameras)")
    ax1.set_xticks(cams or [1])
    tops = [r["events_per_s"] for r in runs] + [r["offered_fps"] or 0 for r in runs] + [baseline, max_fps or 0]
    ax1.set_ylim(0, 1.6 * max([*tops, what_if or 0, 1]))  # headroom: the legend sits above the lines
    ax1.legend(fontsize=8, loc="upper left")
    ax1.set_title("throughput")
    ax2.plot(cams, [r["latency_ms"]["p50"] for r in runs], "o-", label="p50")
    ax2.plot(cams, [r["latency_ms"]["p99"] for r in runs], "s-", label="p99")
    ax2.set_xlabel("cameras")
    ax2.set_ylabel("capture -> classified (ms, log scale)")
    ax2.set_xticks(cams or [1])
    # Log scale: an idle pipeline's tens of ms and an overloaded one's seconds on one readable axis.
    ax2.set_yscale("log")
    ax2.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.legend(fontsize=8)
    ax2.set_title("latency")
    m = results["machine"]
    st = results["settings"]
    fig.suptitle(
        f"emostream bench: {m['cpu_count']} CPUs, YuNet {st['downscale']:g}x at interval {st.get('interval', 1)}, "
        f"{st['workers']} detector workers"
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine_info(model_path: str | Path | None = None) -> dict[str, Any]:
    import torch

    from classifier.model import SHIPPED_MODEL

    model = Path(model_path) if model_path else SHIPPED_MODEL
    cpu_model = "?"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model == "?":
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "model_file": str(model),
        "loadavg_start": list(os.getloadavg()),
    }


# -- the command ---------------------------------------------------------------------------------------


def run_bench(settings: BenchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Every measurement in order; returns the results dict (``headline`` holds the derived numbers)."""
    runs_planned = [*settings.cameras]
    progress = progress or Progress(6 + len(runs_planned) + 2 + (1 if settings.what_if_env else 0))
    started = time.time()
    results: dict[str, Any] = {
        "command": shlex.join([sys.executable, "-m", "deploy", *sys.argv[1:]]),
        "argv": list(sys.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "settings": _jsonable(asdict(settings)),
        "machine": machine_info(),
        "definitions": DEFINITIONS,
    }
    n = settings.baseline_frames or "all"
    slices = []

    def baseline_slice(which: str) -> None:
        progress.step(
            f"baseline ({which} slice): the study's loop on {n} frames of {settings.video.name}, "
            f"at most {settings.baseline_slice_s:g} s"
        )
        with CpuWatch() as watch:
            result = run_baseline(
                settings.video, settings.baseline_frames, chunk=settings.chunk, max_seconds=settings.baseline_slice_s
            )
        result["cpu_watch"] = watch.result
        slices.append(result)
        progress.note(f"{result['fps']:.1f} frames/s on {result['frames']} frames")

    baseline_slice("first")

    progress.step(f"decode: {settings.stage_frames} frames")
    with CpuWatch() as watch:
        decode, frames = read_frames(settings.video, settings.stage_frames, settings.chunk)
    decode["cpu_watch"] = watch.result
    results["stages"] = {"decode": decode}
    progress.note(f"{decode['fps']:.0f} frames/s")

    progress.step(f"detectors: YuNet and Haar at {settings.downscale:g}x on {len(frames)} frames")

    def detector_stage(
        frames: list[np.ndarray], backend: str, model: Path | None, interval: int = 1
    ) -> tuple[dict[str, Any], list, list]:
        with CpuWatch() as watch:
            stage, stage_crops, stage_boxes = measure_detector(
                frames,
                backend,
                model,
                settings.downscale,
                settings.min_face,
                settings.chunk,
                interval=interval,
                threads=settings.detector_threads,
            )
        stage["cpu_watch"] = watch.result
        return stage, stage_crops, stage_boxes

    yunet, crops, yunet_boxes = detector_stage(frames, "yunet", settings.yunet)
    haar, _, _ = detector_stage(frames, "haar", None)
    results["stages"]["detector_yunet"] = yunet
    results["stages"]["detector_haar"] = haar
    if settings.interval > 1:
        tracked, _, _ = detector_stage(frames, "yunet", settings.yunet, settings.interval)
        results["stages"]["detector_yunet_tracked"] = tracked
    results["interval_study"] = interval_study(yunet_boxes, settings.intervals)
    kept = {row["interval"]: row["faces_kept"] for row in results["interval_study"]}
    progress.note(
        f"YuNet {yunet['fps']:.1f} frames/s ({yunet['faces_per_frame']:.2f} faces/frame), "
        f"Haar {haar['fps']:.1f} frames/s ({haar['faces_per_frame']:.2f} faces/frame)"
        + (
            f"; YuNet at interval {settings.interval}: {tracked['fps']:.1f} frames/s, "
            f"{100 * kept.get(settings.interval, 1.0):.1f}% of faces kept"
            if settings.interval > 1
            else ""
        )
    )
    del frames  # ~2.7 MB each at 720p: free them before the pipeline runs start their own processes

    all_crops = np.concatenate(crops) if crops else np.empty((0, 48, 48), np.uint8)
    progress.step(f"classifier: batch 1 vs batch {settings.max_batch} on {len(all_crops)} real crops")
    with CpuWatch() as watch:
        results["classifier"] = measure_classifier(
            all_crops,
            max_batch=settings.max_batch,
            batch1_faces=settings.batch1_faces,
            batched_batches=settings.batched_batches,
            sweep=settings.sweep,
            rounds=settings.classifier_rounds,
            max_seconds=settings.classifier_max_s,
        )
    results["classifier"]["cpu_watch"] = watch.result
    c = results["classifier"]
    progress.note(
        f"batch 1 {c['batch1_faces_per_s']:.0f} faces/s, batch {settings.max_batch} "
        f"{c['batched_faces_per_s']:.0f} faces/s"
    )

    progress.step(f"bf16 matmul peak: {settings.matmul_size}^2 on {settings.matmul_threads} threads")
    with CpuWatch() as watch:
        results["peak"] = measure_matmul_peak(settings.matmul_size, settings.matmul_reps, settings.matmul_threads)
    results["peak"]["cpu_watch"] = watch.result
    progress.note(f"{results['peak']['gflops']:.0f} GFLOP/s")

    common = {
        "warmup_s": settings.warmup_s,
        "measure_s": settings.measure_s,
        "startup_timeout_s": settings.startup_timeout_s,
    }
    results["runs"] = []
    with tempfile.TemporaryDirectory(prefix="emostream-bench-") as workdir:
        for cams in runs_planned:
            progress.step(f"end to end: {cams} camera(s) at 25 fps, {settings.realtime_drop_policy}")
            run = run_end_to_end(
                settings.video,
                settings.yunet,
                settings.spec(cams, "realtime", settings.realtime_drop_policy),
                workdir=workdir,
                **common,
            )
            results["runs"].append(run)
            progress.note(_run_note(run))
        progress.step(f"end to end, max throughput: {settings.fast_cameras} camera(s), pacing fast, block")
        fast = run_end_to_end(
            settings.video,
            settings.yunet,
            settings.spec(settings.fast_cameras, "fast", "block"),
            workdir=workdir,
            **common,
        )
        results["max_throughput"] = fast
        progress.note(_run_note(fast))
        progress.step("end to end, max throughput again with frames over the sockets (network.shared_memory: false)")
        socket = run_end_to_end(
            settings.video,
            settings.yunet,
            replace(settings.spec(settings.fast_cameras, "fast", "block"), shared_memory=False),
            workdir=workdir,
            **common,
        )
        results["max_throughput_socket"] = socket
        progress.note(_run_note(socket))
        if settings.what_if_env:
            env_text = " ".join(f"{k}={v}" for k, v in settings.what_if_env.items())
            progress.step(f"what-if: the max-throughput run again with {env_text} (environment only)")
            what_if = run_end_to_end(
                settings.video,
                settings.yunet,
                settings.spec(settings.fast_cameras, "fast", "block"),
                workdir=workdir,
                env=settings.what_if_env,
                **common,
            )
            results["what_if"] = what_if
            progress.note(_run_note(what_if))
    baseline_slice("last")
    results["baseline"] = merge_baselines(slices)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.time() - started
    results["headline"] = derive(results)
    return results


def _run_note(run: dict[str, Any]) -> str:
    if run.get("error"):
        return f"FAILED: {run['error']}"
    return (
        f"{run['events_per_s']:.1f} events/s, "
        f"p50/p99 {run['latency_ms']['p50']:.0f}/{run['latency_ms']['p99']:.0f} ms, drops {_drops_text(run)}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options (registered by deploy/__main__.py)."""
    parser.add_argument("--quick", action="store_true", help="fewer frames and 12 s windows: ~2-3 minutes")
    parser.add_argument("--json", metavar="FILE", help="write every measurement as JSON here")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG of throughput and latency vs cameras here")
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file (default: %(default)s)")
    parser.add_argument("--yunet", default=str(DEFAULT_YUNET), help="YuNet .onnx (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="detector workers in the pipeline runs (default 2)")
    parser.add_argument("--cameras", default="1,2,4", help="camera counts of the realtime runs (default 1,2,4)")
    parser.add_argument(
        "--interval",
        type=int,
        default=3,
        help="detector.interval of the pipeline runs (default 3; 1: detect every frame)",
    )
    parser.add_argument("--fast-cameras", type=int, default=2, help="cameras of the max-throughput run (default 2)")
    parser.add_argument("--measure-seconds", type=float, help="measured window per pipeline run (40, quick 12)")
    parser.add_argument(
        "--what-if",
        action="append",
        metavar="NAME=VALUE",
        help="one more max-throughput run with this environment variable set (repeatable), e.g. "
        "OMP_NUM_THREADS=2 to compare against the classifier's default of one torch thread",
    )


def cmd_bench(args: argparse.Namespace) -> int:
    """``python -m deploy bench``: measure, print the table, write the JSON and the plot."""
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
    if args.what_if:
        pairs = [item.partition("=") for item in args.what_if]
        if any(not name or not sep for name, sep, _ in pairs):
            print("bench: --what-if takes NAME=VALUE", file=sys.stderr)
            return EXIT_MISSING
        overrides["what_if_env"] = {name: value for name, _, value in pairs}
    settings = BenchSettings.quick_settings(**overrides) if args.quick else BenchSettings(**overrides)
    results = run_bench(settings)
    print(format_report(results), flush=True)
    if args.json:
        print(f"\njson: {write_json(results, args.json)}")
    if args.plot:
        print(f"plot: {write_plot(results, args.plot)}")
    failed = [r["label"] for r in all_runs(results) if r.get("error")]
    if failed:
        print(f"bench: pipeline runs failed: {', '.join(failed)} (see log_tail in the JSON)", file=sys.stderr)
        return 1
    return 0
