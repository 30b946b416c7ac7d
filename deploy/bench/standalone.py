"""Each stage measured alone, in this process, on the same frames: decode (what a capture process
does), a detector worker's per-frame work, the classifier at batch 1 and batched (and its FLOPs), the
machine's matmul peaks (float and int8), and how well a detection interval keeps the faces."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypedDict

import cv2
import numpy as np

from capture.sources import DEFAULT_DECODE_THREADS
from classifier.settings import ClassifierSettings
from deploy.baseline import rate
from deploy.bench.procstats import CpuLoad
from deploy.bench.result import JsonResult
from emostream.boxes import iou_matrix

if TYPE_CHECKING:
    from detector.pipeline import FaceExtractor
    from detector.settings import DetectorBackend, DetectorSettings


@dataclass(frozen=True)
class Measured(JsonResult):
    """A standalone measurement; ``cpu_watch`` says how busy the rest of the machine was meanwhile."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"cpu_watch", "runtime", "align_ms_per_face", "aligned_faces"})


@dataclass(frozen=True)
class DecodeResult(Measured):
    """Decoding the video as a capture process does."""

    #: Frames/s: the median over chunks; ``mean_fps`` over all frames.
    fps: float
    mean_fps: float
    frames: int
    seconds: float
    #: CPU seconds / wall seconds: the cores the decoder kept busy.
    cpu_parallelism: float
    cpu_s_per_frame: float
    #: [width, height] of the frames; ``video_fps`` is the file's nominal rate.
    resolution: list[int]
    video_fps: float
    decode_threads: int
    cpu_watch: CpuLoad | None = None


@dataclass(frozen=True)
class DetectorResult(Measured):
    """A detector worker's per-frame work: downscale, detect (on key frames only at an interval), crop."""

    backend: str
    downscale: float
    min_face: int
    interval: int
    #: Frames/s: the median over chunks; ``mean_fps`` over all frames.
    fps: float
    mean_fps: float
    frames: int
    faces_per_frame: float
    seconds: float
    #: CPU seconds / wall seconds: the cores the detector kept busy.
    cpu_parallelism: float
    cpu_s_per_frame: float
    opencv_threads: int
    #: YuNet's runtime (``detector.runtime``); None for Haar.
    runtime: str | None = None
    #: The aligned crop's own cost (similarity fit and warp from the full-resolution frame), CPU ms per
    #: face, and the faces it was timed on; None without landmarks (Haar) or alignment.
    align_ms_per_face: float | None = None
    aligned_faces: int | None = None
    cpu_watch: CpuLoad | None = None


@dataclass(frozen=True)
class ClassifierResult(Measured):
    """The serving model on real crops, batch 1 against batched (see :func:`measure_classifier`)."""

    model: str
    model_version: str
    arch: str
    #: What served (classifier.runtime auto: the fastest at start-up, as the classifier picks it).
    runtime: str
    bf16: bool
    channels_last: bool
    torch_threads: int
    #: How many distinct crops the batches cycled through, and the rounds every batch size was timed in.
    crops: int
    max_batch: int
    rounds: int
    #: Faces/s, each the median over the rounds.
    batch1_faces_per_s: float
    batched_faces_per_s: float
    batched_over_batch1: float
    faces_per_s_by_batch: dict[int, float]
    tta_flip_faces_per_s: float
    #: FLOPs of one face's forward pass (a multiply-add is 2), and what the two rates make of it.
    flops_per_face: float
    batched_gflops: float
    batch1_gflops: float
    #: CPU use while timing ``max_batch``.
    cpu_parallelism: float
    cpu_s_per_face: float
    cpu_watch: CpuLoad | None = None
    #: Every runtime side by side in the same run (:func:`measure_runtimes`).
    runtimes: list[dict[str, Any]] | None = None
    #: The same model served on torch (``classifier.runtime: torch``: bf16 where the CPU runs it natively),
    #: the path the int8 file replaced, at ``max_batch`` in the same rounds; None where torch is what serves.
    torch_runtime: str | None = None
    torch_faces_per_s: float | None = None
    #: The same served path with int8's near ties kept (``classifier.rescore_near_ties: false``) at
    #: ``max_batch`` in the same rounds; None where nothing is re-scored.
    near_ties_kept_faces_per_s: float | None = None


@dataclass(frozen=True)
class AccurateResult(Measured):
    """The accurate model against the default one, each as the classifier serves it, timed side by side
    (see :func:`measure_accurate`)."""

    model: str
    runtime: str
    default_model: str
    default_runtime: str
    max_batch: int
    rounds: int
    #: Faces/s at ``max_batch``, each the median over the rounds, and their ratio.
    faces_per_s: float
    default_faces_per_s: float
    over_default: float
    flops_per_face: float
    cpu_watch: CpuLoad | None = None


@dataclass(frozen=True)
class MatmulPeak(Measured):
    """The machine's matmul throughput (``dtype``): the best repetition (``gflops``) and the median.
    For ``int8``, giga-operations per second, a multiply-add counted as 2 as in FLOPs."""

    gflops: float
    median_gflops: float
    size: int
    reps: int
    threads: int
    dtype: str
    cpu_watch: CpuLoad | None = None


@dataclass(frozen=True)
class CpuSteadiness(Measured):
    """How steady this CPU's speed is: one fixed single-thread workload timed in ``window_s`` windows.

    On a virtual machine the host's other tenants can take a share of a core's cycles (caches, memory
    bandwidth, a sibling hyperthread) without the guest counting it as steal time: this says how much, to
    describe the machine a bench ran on. ``below`` maps 90 / 80 / 70 (percent of the median window's
    speed) to the share of windows slower than that; ``slowest`` is the slowest window over the median.
    """

    window_s: float
    windows: int
    median_ops_per_s: float
    below: dict[str, float]
    slowest: float
    cpu_watch: CpuLoad | None = None


#: Percent of the median window's speed below which steadiness counts a window as slow.
STEADINESS_THRESHOLDS = (90, 80, 70)


def steadiness(rates: Sequence[float], window_s: float) -> CpuSteadiness:
    """The steadiness figures of per-window rates (operations per second of each window)."""
    if not rates:
        raise ValueError("no window was timed")
    values = np.asarray(rates, dtype=np.float64)
    median = float(np.median(values))
    return CpuSteadiness(
        window_s=window_s,
        windows=len(values),
        median_ops_per_s=median,
        below={str(p): float((values < median * p / 100).mean()) for p in STEADINESS_THRESHOLDS},
        slowest=float(values.min() / median),
    )


def measure_cpu_steadiness(seconds: float, window_s: float = 0.2) -> CpuSteadiness:
    """Blur one 720p frame (OpenCV, one thread) over and over for ``seconds`` and rate each ``window_s``."""
    image = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    rates: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while not rates or time.perf_counter() < end:
            started, count = time.perf_counter(), 0
            while time.perf_counter() - started < window_s:
                cv2.GaussianBlur(image, (7, 7), 0)
                count += 1
            rates.append(count / (time.perf_counter() - started))
    finally:
        cv2.setNumThreads(previous)
    return steadiness(rates, window_s)


@dataclass(frozen=True)
class IntervalRow(JsonResult):
    """How well detection interval ``interval`` keeps the faces (see :func:`interval_study`)."""

    interval: int
    detections_per_frame: float
    faces_kept: float
    median_iou: float
    held_unmatched: float
    tracked_faces: int


class FrameRate(TypedDict):
    """The rate fields decode and detector results share (see :func:`_frame_rate`)."""

    fps: float
    mean_fps: float
    seconds: float
    cpu_parallelism: float
    cpu_s_per_frame: float


def _frame_rate(seconds: Sequence[float], cpu_s: float, chunk: int) -> FrameRate:
    """Frames/s of per-frame timings (median over ``chunk``-frame chunks, and the mean) and the CPU they took."""
    summary = rate([1] * len(seconds), list(seconds), chunk)
    return FrameRate(
        fps=summary["per_s"],
        mean_fps=summary["mean_per_s"],
        seconds=summary["seconds"],
        cpu_parallelism=cpu_s / summary["seconds"] if summary["seconds"] > 0 else 0.0,
        cpu_s_per_frame=cpu_s / len(seconds),
    )


def open_video(video: str | Path, decode_threads: int) -> cv2.VideoCapture:
    """``video`` opened as a capture process opens a file (FFmpeg, ``decode_threads``; 0: FFmpeg's choice)."""
    params = [cv2.CAP_PROP_N_THREADS, decode_threads] if decode_threads else []
    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        raise RuntimeError(f"OpenCV cannot open {video}")
    return cap


def decode_frames(video: str | Path, max_frames: int, decode_threads: int = DEFAULT_DECODE_THREADS) -> list[np.ndarray]:
    """Up to ``max_frames`` decoded frames, untimed."""
    return _decode_pass(video, max_frames, decode_threads, keep=True)[1]


def _decode_pass(
    video: str | Path, max_frames: int, decode_threads: int, keep: bool
) -> tuple[list[float], list[np.ndarray], float, float]:
    """Seconds per frame, the frames when ``keep``, CPU seconds and the nominal fps of one decode pass."""
    cap = open_video(video, decode_threads)
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
    return seconds, kept, time.process_time() - cpu0, nominal_fps


def read_frames(
    video: str | Path, max_frames: int, chunk: int = 25, decode_threads: int = DEFAULT_DECODE_THREADS
) -> tuple[DecodeResult, list[np.ndarray]]:
    """Decode up to ``max_frames`` frames as a capture process does (grab, then retrieve, with its
    ``decode_threads``) and time it.

    Returns the decode throughput and the frames, which the detector measurements then reuse so that
    every stage sees the same pixels. The timed pass lets each frame go before the next, as a capture
    process does once it has sent it; keeping every frame would make each decode fault in fresh pages
    that capture does not pay. A second, untimed pass keeps the frames.
    """
    seconds, _, cpu_s, nominal_fps = _decode_pass(video, max_frames, decode_threads, keep=False)
    frames = decode_frames(video, max_frames, decode_threads)
    if not frames:
        raise RuntimeError(f"{video} yielded no frames")
    height, width = frames[0].shape[:2]
    result = DecodeResult(
        frames=len(seconds),
        resolution=[width, height],
        video_fps=nominal_fps,
        decode_threads=decode_threads,
        **_frame_rate(seconds, cpu_s, chunk),
    )
    return result, frames


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


def warm_extractor(
    first_frame: np.ndarray,
    backend: DetectorBackend,
    model_path: str | Path | None,
    downscale: float,
    min_face: int,
    threads: int,
) -> tuple[FaceExtractor, DetectorSettings]:
    """A detector worker's extractor and its settings, the extractor already run once on ``first_frame``
    (untimed: YuNet sets its input size and allocates its network on the first call)."""
    from detector.pipeline import build_extractor
    from detector.settings import DetectorSettings
    from emostream.wire import Frame

    settings = DetectorSettings(
        backend=backend,
        model=str(model_path) if model_path else None,
        min_face=min_face,
        downscale=downscale,
        threads=threads,
    )
    extractor = build_extractor(settings)
    extractor.process(Frame(camera="bench", seq=0, ts_capture=0.0, image=first_frame))
    return extractor, settings


def measure_detector(
    frames: Sequence[np.ndarray],
    backend: DetectorBackend,
    model_path: str | Path | None,
    downscale: float,
    min_face: int,
    chunk: int = 25,
    interval: int = 1,
    threads: int = 0,
) -> tuple[DetectorResult, list[np.ndarray], list[np.ndarray]]:
    """A detector worker's per-frame work (``FaceExtractor.process``: downscale, detect, crop) on ``frames``.

    With ``interval`` N > 1 one frame in N is a key frame and the others reuse its boxes, as in the
    pipeline. ``threads``: OpenCV threads, as the pipeline's workers run (``detector.threads``; 0
    leaves OpenCV's default). Returns frames/s, the 48x48 crops it produced (the classifier is then
    measured on real faces) and the boxes of every frame.
    """
    from detector.align import aligned_crops
    from emostream.wire import Frame

    with opencv_threads(threads):
        extractor, settings = warm_extractor(frames[0], backend, model_path, downscale, min_face, threads)
        seconds: list[float] = []
        crops: list[np.ndarray] = []
        boxes: list[np.ndarray] = []
        faces_of: list[tuple[np.ndarray, np.ndarray]] = []  # (frame, its faces' landmarks)
        cpu0 = time.process_time()
        for seq, image in enumerate(frames):
            frame = Frame(camera="bench", seq=seq, ts_capture=0.0, image=image, key=seq % interval == 0)
            t0 = time.perf_counter()
            faces = extractor.process(frame)
            seconds.append(time.perf_counter() - t0)
            crops.append(faces.crops)
            boxes.append(faces.boxes)
            held = extractor.key_faces("bench")
            if extractor.align and held is not None and held.landmarks is not None:
                faces_of.append((image, held.landmarks))
        cpu_s = time.process_time() - cpu0
        # The alignment's share, timed apart (thread CPU time) on the same frames and faces.
        aligned = sum(len(marks) for _, marks in faces_of)
        align_cpu = 0.0
        for image, marks in faces_of:
            t0 = time.thread_time()
            aligned_crops(image, marks, settings.crop_size)
            align_cpu += time.thread_time() - t0
        result = DetectorResult(
            backend=backend,
            downscale=downscale,
            min_face=min_face,
            interval=interval,
            frames=len(frames),
            faces_per_frame=sum(len(c) for c in crops) / len(frames),
            opencv_threads=cv2.getNumThreads(),
            runtime=settings.runtime if backend == "yunet" else None,
            align_ms_per_face=1000 * align_cpu / aligned if aligned else None,
            aligned_faces=aligned if aligned else None,
            **_frame_rate(seconds, cpu_s, chunk),
        )
        return result, crops, boxes


def interval_study(
    detected: Sequence[np.ndarray], intervals: Sequence[int], iou_threshold: float = 0.5
) -> list[IntervalRow]:
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
                iou = iou_matrix(boxes, held)
                best = iou.max(axis=1)
                matched += int((best >= iou_threshold).sum())
                ious.extend(best.tolist())
                held_unmatched += int((iou.max(axis=0) < iou_threshold).sum())
            else:
                ious.extend([0.0] * len(boxes))
                held_unmatched += len(held)
        study.append(
            IntervalRow(
                interval=n,
                detections_per_frame=1.0 / n,
                faces_kept=matched / total if total else 1.0,
                median_iou=float(np.median(ious)) if ious else 1.0,
                held_unmatched=held_unmatched / held_total if held_total else 0.0,
                tracked_faces=total,
            )
        )
    return study


def measure_runtimes(
    model_path: str | Path | None, max_batch: int, threads: Sequence[int], rounds: int = 3
) -> list[dict[str, Any]]:
    """Faces/s of torch fp32, torch bf16 and onnxruntime on the int8 file beside the model (when there is
    one), at batch 1 and ``max_batch``, on each of ``threads``, interleaved in one run
    (:func:`classifier.runtimes.side_by_side`); one entry per runtime and thread count."""
    from classifier.runtimes import int8_beside, side_by_side
    from classifier.settings import SHIPPED_MODEL

    source = Path(model_path) if model_path else SHIPPED_MODEL
    onnx_files = [f for f in (int8_beside(source),) if f.is_file()]
    rows = side_by_side(source, onnx_files, batches=(1, max_batch), threads=threads, rounds=rounds)
    grouped: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        entry = grouped.setdefault(
            (row["runtime"], row["threads"]),
            {"runtime": row["runtime"], "file": row["file"], "threads": row["threads"], "faces_per_s_by_batch": {}},
        )
        entry["faces_per_s_by_batch"][row["batch"]] = row["faces_per_s"]
    return list(grouped.values())


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


def measure_matmul_peak(size: int = 4096, reps: int = 8, threads: int = 2, dtype: str | None = None) -> MatmulPeak:
    """The machine's matrix throughput: ``torch.matmul`` of two ``size`` x ``size`` matrices of ``dtype``
    (None: bfloat16 where the CPU has it in hardware, else float32; emulated bf16 is an order of
    magnitude slower and says nothing about what serves).

    Reported as the best repetition (``gflops``), since other processes can only ever slow one down:
    the fastest is the closest to what the hardware does. The median is kept alongside.
    """
    import torch

    from emostream.cpu import cpu_info

    dtype = dtype or ("bfloat16" if cpu_info().native_bf16 else "float32")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, dtype=getattr(torch, dtype))
        b = torch.randn(size, size, dtype=getattr(torch, dtype))
        return _time_matmul(lambda: torch.matmul(a, b), size, reps, threads, dtype)
    finally:
        torch.set_num_threads(previous)


def _time_matmul(multiply: Callable[[], object], size: int, reps: int, threads: int, dtype: str) -> MatmulPeak:
    """``multiply`` (one ``size`` x ``size`` by ``size`` x ``size`` product) run twice untimed, then timed
    ``reps`` times: the best repetition and the median."""
    for _ in range(2):  # set-up (oneDNN/AMX, kernel selection) and page faults: not part of the peak
        multiply()
    rates = []
    for _ in range(max(1, reps)):
        t0 = time.perf_counter()
        multiply()
        rates.append(2.0 * size**3 / (time.perf_counter() - t0) / 1e9)
    return MatmulPeak(
        gflops=max(rates),
        median_gflops=statistics.median(rates),
        size=size,
        reps=len(rates),
        threads=threads,
        dtype=dtype,
    )


def measure_int8_peak(size: int = 1024, reps: int = 8, threads: int = 2) -> MatmulPeak:
    """The machine's int8 matrix throughput: onnxruntime's ``MatMulInteger`` (uint8 x int8 -> int32, the
    integer GEMM its int8 convolutions run on: VNNI or AMX where the CPU has them) of two ``size`` x
    ``size`` matrices on ``threads`` threads; best repetition and median, as :func:`measure_matmul_peak`.

    What an int8 model file can reach at most: its batched faces/s times FLOPs per face stays under it,
    which also bounds how far batching can lift the rate over batch 1.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from emostream.onnxmodel import session_options

    rng = np.random.default_rng(0)
    weights = rng.integers(-127, 128, (size, size), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_peak",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])],
        [numpy_helper.from_array(weights, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    # The classifier's own session options, so that the peak is what its int8 kernels could reach.
    options = session_options(threads)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    return _time_matmul(lambda: session.run(None, {"a": a}), size, reps, threads, "int8")


def budgeted_rounds(rounds: int, max_seconds: float | None) -> Iterator[int]:
    """Round numbers 0, 1, ... below ``rounds`` (one at least). Once ``max_seconds`` have passed since
    the first began, it stops after the second round at the earliest, so a slowed-down machine cannot
    stretch a measurement."""
    started = time.perf_counter()
    for index in range(max(1, rounds)):
        if max_seconds is not None and index >= 2 and time.perf_counter() - started > max_seconds:
            return
        yield index


def measure_classifier(
    crops: np.ndarray,
    model_path: str | Path | None = None,
    max_batch: int = ClassifierSettings().max_batch,
    batch1_faces: int = 400,
    batched_batches: int = 40,
    sweep: Sequence[int] = (8, 16, 32),
    rounds: int = 8,
    max_seconds: float | None = None,
) -> ClassifierResult:
    """The serving model as the classifier serves it (``EmotionModel``, ``classifier.runtime: auto``: the
    fastest of torch and the int8 file at start-up) at batch 1, ``max_batch`` and ``sweep``, and at
    ``max_batch`` served with flip test-time augmentation (``classifier.tta: flip``) and served on torch
    (``classifier.runtime: torch``), where torch is not what ``auto`` chose.

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
    from emostream.modelfile import load_model

    if len(crops) == 0:
        raise ValueError("no face crops to classify (the detector found no face in the frames)")
    threads = torch.get_num_threads()
    model = EmotionModel(model_path, device="cpu", runtime="auto", threads=threads, batch=max_batch)
    flip_model = EmotionModel(model_path, device="cpu", tta="flip", runtime="auto", threads=threads, batch=max_batch)
    torch_model = kept_model = None
    if model.runtime.name != "torch":
        torch_model = EmotionModel(model_path, device="cpu", runtime="torch", threads=threads, batch=max_batch)
        torch_model.predict(crops[np.arange(max_batch) % len(crops)])
    if model.rescores_near_ties:
        kept_model = EmotionModel(
            model_path, "cpu", runtime=model.runtime.name, threads=threads, batch=max_batch, rescore_near_ties=False
        )
        kept_model.predict(crops[np.arange(max_batch) % len(crops)])
    sizes = sorted({1, max_batch, *sweep})
    n = len(crops)
    for size in sizes:  # untimed: oneDNN builds its kernels for each new input shape
        model.predict(crops[np.arange(size) % n])
    flip_model.predict(crops[np.arange(max_batch) % n])
    per_round: dict[int, list[float]] = {size: [] for size in sizes}
    flip_rates: list[float] = []
    torch_rates: list[float] = []
    kept_rates: list[float] = []
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

    for _ in budgeted_rounds(rounds, max_seconds):
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
        if torch_model is not None:
            torch_rates.append(calls * max_batch / timed_calls(torch_model, max_batch, calls))
        if kept_model is not None:
            kept_rates.append(calls * max_batch / timed_calls(kept_model, max_batch, calls))
    by_batch = {size: statistics.median(rates) for size, rates in per_round.items()}
    # FLOPs from the float network: an onnxruntime module is not a torch one to count in.
    flops = count_flops_per_face(load_model(model.source)[0], model.info.input_size)
    batch1, batched = by_batch[1], by_batch[max_batch]
    return ClassifierResult(
        model=str(model.path),
        model_version=model.version,
        arch=model.info.arch,
        runtime=model.runtime.label,
        bf16=model.bf16,
        channels_last=model.runtime.label.startswith("torch"),
        torch_threads=torch.get_num_threads(),
        crops=int(n),
        max_batch=max_batch,
        rounds=len(flip_rates),
        batch1_faces_per_s=batch1,
        batched_faces_per_s=batched,
        batched_over_batch1=batched / batch1 if batch1 > 0 else 0.0,
        faces_per_s_by_batch=by_batch,
        tta_flip_faces_per_s=statistics.median(flip_rates),
        flops_per_face=flops,
        batched_gflops=batched * flops / 1e9,
        batch1_gflops=batch1 * flops / 1e9,
        cpu_parallelism=batched_cpu / batched_wall if batched_wall > 0 else 0.0,
        cpu_s_per_face=batched_cpu / batched_faces if batched_faces else 0.0,
        torch_runtime=torch_model.runtime.label if torch_model is not None else None,
        torch_faces_per_s=statistics.median(torch_rates) if torch_rates else None,
        near_ties_kept_faces_per_s=statistics.median(kept_rates) if kept_rates else None,
    )


def measure_accurate(
    crops: np.ndarray,
    model_path: str | Path,
    default_path: str | Path | None = None,
    max_batch: int = ClassifierSettings().max_batch,
    calls_per_round: int = 5,
    rounds: int = 8,
    max_seconds: float | None = None,
) -> AccurateResult:
    """Faces/s of ``model_path`` (the accurate operating point) and of ``default_path`` (None: the shipped
    model) at ``max_batch`` on the same real crops, both served as the classifier serves them
    (``classifier.runtime: auto``), in alternating rounds of ``calls_per_round`` calls; each rate is its
    median over the rounds, so their ratio shares the machine's conditions. ``max_seconds`` ends it after
    the round that passes it (two rounds at least)."""
    import torch

    from classifier.model import EmotionModel
    from emostream.modelfile import load_model

    if len(crops) == 0:
        raise ValueError("no face crops to classify (the detector found no face in the frames)")
    threads = torch.get_num_threads()
    served = [
        EmotionModel(path, device="cpu", runtime="auto", threads=threads, batch=max_batch)
        for path in (model_path, default_path)
    ]
    n = len(crops)
    batches = [np.ascontiguousarray(crops[(i * max_batch + np.arange(max_batch)) % n]) for i in range(calls_per_round)]
    for model in served:  # untimed: the first calls allocate and pick kernels
        model.predict(batches[0])
    rates: list[list[float]] = [[], []]
    for _ in budgeted_rounds(rounds, max_seconds):
        for model, model_rates in zip(served, rates, strict=True):
            t0 = time.perf_counter()
            for batch in batches:
                model.predict(batch)
            model_rates.append(len(batches) * max_batch / (time.perf_counter() - t0))
    accurate, default = (statistics.median(r) for r in rates)
    return AccurateResult(
        model=str(served[0].source),
        runtime=served[0].runtime.label,
        default_model=str(served[1].source),
        default_runtime=served[1].runtime.label,
        max_batch=max_batch,
        rounds=len(rates[0]),
        faces_per_s=accurate,
        default_faces_per_s=default,
        over_default=accurate / default if default > 0 else 0.0,
        flops_per_face=count_flops_per_face(load_model(served[0].source)[0], served[0].info.input_size),
    )
