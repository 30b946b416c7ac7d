"""The study's approach, measured as the baseline emostream is compared against: one process, one loop.

For every frame of the video, in order and one thing at a time:

1. decode it with OpenCV (``cv2.VideoCapture.read``);
2. run the Haar cascade ``haarcascade_frontalface_default`` on the full-resolution grayscale frame
   with ``scaleFactor=1.3, minNeighbors=5`` (the study's settings, no downscale, no minimum size);
3. crop every face box out of the grayscale frame and resize it to 48x48 (``cv2.resize`` defaults);
4. classify each face on its own: the shipped model, batch 1, float32, no channels-last, no bf16.

Only the model is ours (the study's own network is not available); everything around it is what the
study did. Each part of the loop is timed separately, so the report can say where its time went.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import cv2.data  # the Haar cascades' folder; cv2's stubs do not list the submodule
import numpy as np

#: The study's cascade settings.
HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.3
HAAR_MIN_NEIGHBORS = 5
CROP = 48


def rate(units: Sequence[float], seconds: Sequence[float], chunk: int) -> dict[str, float]:
    """Throughput of timed work items: the median over consecutive chunks of ``chunk`` items, and the mean.

    Why the median of chunks: other processes share this machine's two cores, and a burst of theirs
    slows down a few chunks of ours; the median ignores those chunks, the plain mean does not. A chunk
    spans several items because single items vary with content (frames with more faces cost more).
    A trailing partial chunk only counts when there is no full one.
    """
    if len(units) != len(seconds):
        raise ValueError("units and seconds must have the same length")
    total_units = float(sum(units))
    total_s = float(sum(seconds))
    chunk = max(1, int(chunk))
    rates: list[float] = []
    for start in range(0, len(units), chunk):
        part_s = sum(seconds[start : start + chunk])
        full = start + chunk <= len(units)
        if part_s > 0 and (full or not rates):
            rates.append(sum(units[start : start + chunk]) / part_s)
    return {
        "per_s": statistics.median(rates) if rates else 0.0,
        "mean_per_s": total_units / total_s if total_s > 0 else 0.0,
        "units": total_units,
        "seconds": total_s,
        "chunks": len(rates),
    }


def run_baseline(
    video: str | Path,
    max_frames: int | None = None,
    model_path: str | Path | None = None,
    chunk: int = 25,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Run the study's sequential loop on ``video`` (up to ``max_frames`` frames) and time it.

    ``max_seconds`` also ends the loop (after at least one chunk), so that a machine slowed down by
    other processes cannot stretch the bench beyond its time budget.
    Returns ``fps`` (median over chunks of ``chunk`` frames, see :func:`rate`), ``mean_fps``,
    ``chunk_fps`` (each chunk's rate, for :func:`merge_baselines`), face counts, and the seconds
    spent in each part of the loop (decode, detect, crop, classify).
    """
    # torch is imported here, not at module level: deploy/bench imports this module and is itself
    # imported by the launcher's CLI, which must not pay torch's import time for `deploy run`.
    import torch

    from classifier.settings import SHIPPED_MODEL
    from emostream.modelfile import load_model

    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"video file {video} does not exist")
    model_path = Path(model_path) if model_path else SHIPPED_MODEL
    module, info = load_model(model_path, device="cpu")
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, HAAR_FILE))
    if cascade.empty():
        raise RuntimeError(f"cannot load the Haar cascade {HAAR_FILE}")
    # One untimed forward pass: the first call of an exported program pays one-off setup costs
    # that say nothing about the loop's steady state.
    with torch.inference_mode():
        module(torch.zeros(1, 1, CROP, CROP))

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise RuntimeError(f"OpenCV cannot open {video}")
    parts = {"decode": 0.0, "detect": 0.0, "crop": 0.0, "classify": 0.0}
    frame_seconds: list[float] = []
    faces_per_frame: list[int] = []
    emotions: dict[str, int] = {}
    cpu_start = time.process_time()
    try:
        while max_frames is None or len(frame_seconds) < max_frames:
            if max_seconds is not None and len(frame_seconds) >= chunk and sum(frame_seconds) >= max_seconds:
                break
            t0 = time.perf_counter()
            ok, frame = cap.read()
            t1 = time.perf_counter()
            if not ok:
                break
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            boxes = cascade.detectMultiScale(gray, scaleFactor=HAAR_SCALE_FACTOR, minNeighbors=HAAR_MIN_NEIGHBORS)
            t2 = time.perf_counter()
            crop_s = classify_s = 0.0
            for x, y, w, h in boxes:
                c0 = time.perf_counter()
                crop = cv2.resize(gray[y : y + h, x : x + w], (CROP, CROP))
                # The model file's own normalisation: without it the shipped model's outputs mean nothing.
                pixels = torch.from_numpy(crop.astype(np.float32) / 255.0)
                tensor = ((pixels - info.mean) / info.std).reshape(1, 1, CROP, CROP)
                c1 = time.perf_counter()
                with torch.inference_mode():
                    logits = module(tensor)
                top = int(torch.argmax(logits, dim=1)[0])
                c2 = time.perf_counter()
                crop_s += c1 - c0
                classify_s += c2 - c1
                name = info.class_names[top]
                emotions[name] = emotions.get(name, 0) + 1
            t3 = time.perf_counter()
            parts["decode"] += t1 - t0
            parts["detect"] += t2 - t1
            parts["crop"] += crop_s
            parts["classify"] += classify_s
            frame_seconds.append(t3 - t0)
            faces_per_frame.append(len(boxes))
    finally:
        cap.release()
    cpu_s = time.process_time() - cpu_start
    if not frame_seconds:
        raise RuntimeError(f"{video} yielded no frames")
    summary = rate([1] * len(frame_seconds), frame_seconds, chunk)
    chunk_fps = [
        len(frame_seconds[i : i + chunk]) / sum(frame_seconds[i : i + chunk])
        for i in range(0, len(frame_seconds), chunk)
        if i + chunk <= len(frame_seconds) or i == 0
    ]
    faces = int(sum(faces_per_frame))
    total_s = summary["seconds"]
    return {
        "method": (
            f"one process: cv2.VideoCapture.read -> Haar {HAAR_FILE} at full resolution "
            f"(scaleFactor {HAAR_SCALE_FACTOR}, minNeighbors {HAAR_MIN_NEIGHBORS}) -> 48x48 gray crops -> "
            "shipped model, batch 1, float32"
        ),
        "fps": summary["per_s"],
        "mean_fps": summary["mean_per_s"],
        "frames": len(frame_seconds),
        "seconds": total_s,
        "chunks": summary["chunks"],
        "chunk_fps": chunk_fps,
        "faces": faces,
        "faces_per_frame": faces / len(frame_seconds),
        "seconds_by_part": parts,
        "share_by_part": {k: v / total_s for k, v in parts.items()} if total_s > 0 else {},
        "classify_faces_per_s": faces / parts["classify"] if parts["classify"] > 0 else 0.0,
        "cpu_parallelism": cpu_s / total_s if total_s > 0 else 0.0,
        "emotions": emotions,
        "torch_threads": torch.get_num_threads(),
        "opencv_threads": cv2.getNumThreads(),
    }


def merge_baselines(slices: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One baseline from several :func:`run_baseline` slices measured at different moments of a bench.

    Why slices: other processes come and go on a shared machine; a baseline measured once can fall
    into a busy minute (its rate then drops several-fold) while the pipeline runs fall into a quiet
    one. ``fps`` is the median over every chunk of every slice; the slices stay listed.
    """
    if not slices:
        raise ValueError("no baseline slices")
    merged = dict(slices[0])
    merged.pop("cpu_watch", None)  # belongs to one slice; every slice's is kept under "slices"
    chunk_fps = [r for s in slices for r in s["chunk_fps"]]
    frames = sum(s["frames"] for s in slices)
    seconds = sum(s["seconds"] for s in slices)
    parts = {k: sum(s["seconds_by_part"][k] for s in slices) for k in slices[0]["seconds_by_part"]}
    emotions: dict[str, int] = {}
    for s in slices:
        for name, count in s["emotions"].items():
            emotions[name] = emotions.get(name, 0) + count
    faces = sum(s["faces"] for s in slices)
    merged.update(
        {
            "fps": statistics.median(chunk_fps),
            "mean_fps": frames / seconds if seconds > 0 else 0.0,
            "frames": frames,
            "seconds": seconds,
            "chunks": len(chunk_fps),
            "chunk_fps": chunk_fps,
            "faces": faces,
            "faces_per_frame": faces / frames if frames else 0.0,
            "seconds_by_part": parts,
            "share_by_part": {k: v / seconds for k, v in parts.items()} if seconds > 0 else {},
            "classify_faces_per_s": faces / parts["classify"] if parts.get("classify") else 0.0,
            "cpu_parallelism": sum(s["cpu_parallelism"] * s["seconds"] for s in slices) / seconds if seconds else 0.0,
            "emotions": emotions,
            "slices": [{k: s.get(k) for k in ("fps", "mean_fps", "frames", "seconds", "cpu_watch")} for s in slices],
        }
    )
    return merged
