"""``python -m deploy.bench.key_frames``: what a detector worker's frames cost under each rolled-pass
schedule (``detector.roll_every``), the mean and the key frames' tail, on the bench video.

The frames are decoded once; then, for each ``--roll-every`` value in turn, a fresh extractor with the
four-camera settings (0.5x, ``min_face`` 20, one thread) takes every frame of one camera, a key frame
every ``--interval``, over ``--passes`` passes of the video (the first pass warms up and is not counted).
Thread CPU time per call, so other processes on the machine change the figures little. One JSON line per
schedule: ``ms_per_frame``, the key frames' mean / 95th percentile / maximum, faces per frame.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from deploy.bench.settings import DEFAULT_VIDEO, PipelineSpec
from deploy.bench.standalone import read_frames


def schedule_cost(frames: Sequence[np.ndarray], roll_every: int, interval: int, passes: int = 2) -> dict[str, Any]:
    """Thread CPU per frame of one camera's ``frames`` through a fresh extractor (see the module docstring)."""
    from detector.pipeline import build_extractor
    from detector.settings import DetectorSettings

    spec = PipelineSpec(cameras=1)
    extractor = build_extractor(
        DetectorSettings(downscale=spec.downscale, min_face=spec.min_face, threads=1, roll_every=roll_every)
    )
    costs, faces = [], 0
    for rep in range(passes):
        for i, image in enumerate(frames):
            start = time.thread_time()
            found, _ = extractor.extract(image, "cam", key=i % interval == 0)
            if rep:
                costs.append(1000 * (time.thread_time() - start))
                faces += len(found)
    per_frame = np.asarray(costs)
    key = per_frame.reshape(passes - 1, len(frames))[:, ::interval].ravel()
    return {
        "roll_every": roll_every,
        "interval": interval,
        "frames": len(per_frame),
        "ms_per_frame": round(float(per_frame.mean()), 3),
        "key_ms_mean": round(float(key.mean()), 2),
        "key_ms_p95": round(float(np.percentile(key, 95)), 2),
        "key_ms_max": round(float(key.max()), 2),
        "faces_per_frame": round(faces / len(per_frame), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.bench.key_frames", description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", default=str(DEFAULT_VIDEO), help="video file (default: %(default)s)")
    parser.add_argument("--roll-every", type=int, nargs="+", default=[4, 8], help="schedules to measure")
    parser.add_argument("--interval", type=int, default=3, help="detector.interval (default %(default)s)")
    parser.add_argument("--frames", type=int, default=241, help="frames of the video (default %(default)s)")
    parser.add_argument("--passes", type=int, default=3, help="passes over the frames, the first not counted")
    args = parser.parse_args(argv)
    if args.passes < 2 or args.interval < 1 or args.frames < 1 or min(args.roll_every) < 1:
        parser.error("--passes must be at least 2; --interval, --frames and --roll-every at least 1")
    cv2.setNumThreads(1)
    _, frames = read_frames(args.video, args.frames)
    for roll_every in args.roll_every:
        print(json.dumps(schedule_cost(frames, roll_every, args.interval, args.passes)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
