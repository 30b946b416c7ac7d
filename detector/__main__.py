"""``python -m detector``: one face-detection worker (the launcher starts ``workers`` of them).

Exit codes: 0 on SIGTERM/SIGINT, 2 for settings no restart can fix (bad arguments, a YuNet model
that does not exist or does not load).
"""

from __future__ import annotations

import argparse
import logging
import sys

import cv2
import zmq

from detector.backends import DetectorConfigError
from detector.pipeline import build_extractor
from detector.worker import DEFAULT_WINDOW, DetectorWorker
from emostream.runtime import EXIT_FATAL, add_common_args, start_process

log = logging.getLogger("detector")


def _downscale(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not in 1..100")
    return value


def _crop_size(text: str) -> int:
    value = int(text)
    if not 8 <= value <= 512:
        raise argparse.ArgumentTypeError(f"{text} is not in 8..512")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector", description="Find faces in camera frames and send crops to the classifier."
    )
    parser.add_argument("--worker", type=int, default=0, help="this worker's index, for logs (replicas may all use 0)")
    parser.add_argument(
        "--frames", action="append", required=True, help="a camera's frames endpoint to connect to (repeat per camera)"
    )
    parser.add_argument("--push", required=True, help="the classifier's endpoint to connect to")
    parser.add_argument("--backend", choices=["haar", "yunet"], default="haar")
    parser.add_argument("--model", help="YuNet .onnx file (required with --backend yunet)")
    parser.add_argument(
        "--downscale", type=_downscale, default=1.0, help="detect on the frame resized by this factor (0.5: half)"
    )
    parser.add_argument("--min-face", type=int, default=40, help="smallest face to report, in full-resolution pixels")
    parser.add_argument(
        "--score-threshold", type=_unit_interval, default=0.7, help="YuNet's minimum confidence (Haar: unused)"
    )
    parser.add_argument("--crop-size", type=_crop_size, default=48, metavar="PX", help="crop side (FER2013: 48)")
    parser.add_argument(
        "--threads", type=int, default=0, help="OpenCV threads (0: OpenCV's default); 1 when workers fill the cores"
    )
    parser.add_argument(
        "--interval",
        type=_positive_int,
        default=1,
        help="detect faces on one frame in N per camera, reuse its boxes on the N-1 after (default 1: every frame)",
    )
    parser.add_argument(
        "--window",
        type=_positive_int,
        default=DEFAULT_WINDOW,
        help=f"frames in flight per camera towards this worker (default {DEFAULT_WINDOW})",
    )
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = start_process(f"detector[{args.worker}]", args)
    if args.threads > 0:
        cv2.setNumThreads(args.threads)
    try:
        extractor = build_extractor(
            backend=args.backend,
            model_path=args.model,
            score_threshold=args.score_threshold,
            min_face=args.min_face,
            downscale=args.downscale,
            crop_size=args.crop_size,
        )
    except DetectorConfigError as exc:
        log.error("worker %d: %s", args.worker, exc)
        return EXIT_FATAL
    context = zmq.Context()
    try:
        worker = DetectorWorker(
            context,
            args.frames,
            args.push,
            extractor,
            stop,
            worker_id=args.worker,
            window=args.window,
            interval=args.interval,
            keys=args.curve_keys,
        )
    except zmq.ZMQError as exc:
        log.error("worker %d: bad endpoint in --frames/--push: %s", args.worker, exc)
        context.destroy(linger=0)
        return EXIT_FATAL
    log.info(
        "worker %d: %s detector (downscale %g, min face %d px, interval %d) taking frames from %s, pushing to %s",
        args.worker,
        args.backend,
        args.downscale,
        args.min_face,
        args.interval,
        ", ".join(args.frames),
        args.push,
    )
    try:
        worker.run()
    finally:
        worker.close()
        context.term()
    log.info("worker %d: stopped; %d frames processed, %d malformed", args.worker, worker.processed, worker.rejected)
    return 0


if __name__ == "__main__":
    sys.exit(main())
