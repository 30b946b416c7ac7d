"""The stages' CPU cost per frame with every usable CPU busy at once.

The CPU budget (:mod:`deploy.bench.ratios`) adds up what each stage costs per frame measured alone, with
the other CPUs idle. In the pipeline every CPU is busy, and on some machines a stage then costs more per
frame: the CPUs share caches, memory bandwidth or a host's physical core. One copy of a stage on each
usable CPU at once, each single-threaded as a capture and a detector worker run, measures that; the same
loop on one CPU just before gives the cost alone, so the slowdown is a ratio measured side by side.
"""

from __future__ import annotations

import multiprocessing
import queue
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from deploy.bench.result import JsonResult

AllCoreStageName = Literal["decode", "detector"]
#: Seconds a copy may take to start, load its frames and model, beyond the measured ones.
SETUP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class AllCoreStage(JsonResult):
    """One stage's CPU seconds per frame alone and with ``processes`` copies running at once."""

    stage: str
    processes: int
    seconds: float
    alone_cpu_s_per_frame: float
    #: The median over the copies; ``by_process`` keeps each copy's.
    all_cores_cpu_s_per_frame: float
    by_process: list[float]
    #: all_cores_cpu_s_per_frame / alone_cpu_s_per_frame.
    slowdown: float


@dataclass(frozen=True)
class StageLoop:
    """What one copy runs: a stage's per-frame work, single-threaded, as the pipeline's process does it."""

    stage: AllCoreStageName
    video: str
    yunet: str | None = None
    downscale: float = 0.5
    min_face: int = 40
    interval: int = 1
    #: Frames a detector copy decodes first and then cycles through (the standalone stages' frames).
    frames: int = 241


def _decode_step(loop: StageLoop) -> Callable[[], None]:
    from capture.sources import DEFAULT_DECODE_THREADS
    from deploy.bench.standalone import open_video

    cap = open_video(loop.video, DEFAULT_DECODE_THREADS)

    def step() -> None:
        nonlocal cap
        if not cap.grab():  # the end of the file: start it again
            cap.release()
            cap = open_video(loop.video, DEFAULT_DECODE_THREADS)
            cap.grab()
        cap.retrieve()

    return step


def _detector_step(loop: StageLoop) -> Callable[[], None]:
    from deploy.bench.standalone import decode_frames, warm_extractor
    from emostream.wire import Frame

    frames = decode_frames(loop.video, loop.frames)
    if not frames:
        raise RuntimeError(f"{loop.video} yielded no frames")
    extractor, _ = warm_extractor(frames[0], "yunet", loop.yunet, loop.downscale, loop.min_face, threads=1)
    seq = 0

    def step() -> None:
        nonlocal seq
        image = frames[seq % len(frames)]
        extractor.process(Frame(camera="bench", seq=seq, ts_capture=0.0, image=image, key=seq % loop.interval == 0))
        seq += 1

    return step


def _copy(loop: StageLoop, seconds: float, barrier: Any, results: Any) -> None:
    """One copy: set up untimed, wait for the others, then run the stage for ``seconds``."""
    import cv2

    from emostream.runtime import tune_malloc

    tune_malloc()  # the allocator every stage runs with
    cv2.setNumThreads(1)
    step = _decode_step(loop) if loop.stage == "decode" else _detector_step(loop)
    step()
    barrier.wait()
    frames, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        step()
        frames += 1
    results.put((time.process_time() - cpu0) / max(1, frames))


def run_copies(loop: StageLoop, processes: int, seconds: float) -> list[float]:
    """CPU seconds per frame of each of ``processes`` copies of ``loop`` run at once (fresh processes)."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_copy, args=(loop, seconds, barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    costs: list[float] = []
    deadline = time.monotonic() + seconds + SETUP_TIMEOUT_S
    try:
        while len(costs) < processes:
            try:
                costs.append(results.get(timeout=0.5))
                continue
            except queue.Empty:
                pass
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                # A copy that died cannot reach the barrier: the others would wait for it until the deadline.
                limit = seconds + SETUP_TIMEOUT_S
                why = f"exited with code {failed[0]}" if failed else f"gave no result in {limit:g} s"
                raise RuntimeError(f"a {loop.stage} copy {why} (its traceback is above)")
    finally:
        # Every copy has put its result and is exiting; after a failure the others may be at the barrier.
        for worker in workers:
            worker.join(timeout=30.0 if len(costs) == processes else 0.0)
            if worker.is_alive():
                worker.kill()
                worker.join()
    return costs


def measure_all_cores(loop: StageLoop, processes: int, seconds: float) -> AllCoreStage:
    """``loop`` alone, then ``processes`` copies at once: the stage's slowdown when every CPU is busy."""
    alone = run_copies(loop, 1, seconds)[0]
    each = run_copies(loop, processes, seconds)
    together = statistics.median(each)
    return AllCoreStage(
        stage=loop.stage,
        processes=processes,
        seconds=seconds,
        alone_cpu_s_per_frame=alone,
        all_cores_cpu_s_per_frame=together,
        by_process=each,
        slowdown=together / alone,
    )


def stage_loops(
    video: Path, yunet: Path, downscale: float, min_face: int, interval: int, frames: int
) -> list[StageLoop]:
    """The two single-threaded stages whose copies fill the CPUs in the pipeline: decode and the detector."""
    return [
        StageLoop("decode", str(video)),
        StageLoop("detector", str(video), str(yunet), downscale, min_face, interval, frames),
    ]
