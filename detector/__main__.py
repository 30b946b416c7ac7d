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
from detector.settings import DetectorSettings
from detector.worker import DetectorWorker
from emostream.cpu import CpuBudget, thread_budget
from emostream.follow import add_follow_arg, follow_stdin
from emostream.runtime import EXIT_FATAL, add_common_args, start_process
from emostream.settings_cli import SettingsParser

log = logging.getLogger("detector")


def build_parser() -> argparse.ArgumentParser:
    parser = SettingsParser(
        prog="python -m detector",
        description="Find faces in camera frames and send crops to the classifier.",
        settings=DetectorSettings,
    )
    parser.add_argument("--worker", type=int, default=0, help="this worker's index, for logs (replicas may all use 0)")
    parser.add_argument(
        "--frames", action="append", required=True, help="a camera's frames endpoint to connect to (repeat per camera)"
    )
    parser.add_argument("--push", required=True, help="the classifier's endpoint to connect to")
    add_follow_arg(parser)
    add_common_args(parser)
    return parser


def set_opencv_threads(requested: int, budget: CpuBudget) -> str:
    """OpenCV's pool (YuNet, resizes, warps): ``detector.threads``, or the CPU budget for 0 (auto)."""
    cv2.setNumThreads(thread_budget(requested, budget))
    return f"OpenCV {cv2.getNumThreads()}" + (" (auto)" if requested == 0 else "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings: DetectorSettings = args.settings
    stop = start_process(f"detector[{args.worker}]", args, lambda budget: set_opencv_threads(settings.threads, budget))
    # 0 (auto) resolved here once: ONNX Runtime's YuNet would otherwise start one thread per host core.
    settings = settings.model_copy(update={"threads": thread_budget(settings.threads)})
    try:
        extractor = build_extractor(settings)
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
            settings=settings,
            keys=args.curve_keys,
            updates=follow_stdin(args.follow_stdin),
        )
    except zmq.ZMQError as exc:
        log.error("worker %d: bad endpoint in --frames/--push: %s", args.worker, exc)
        context.destroy(linger=0)
        return EXIT_FATAL
    log.info(
        "worker %d: %s detector%s (downscale %g, min face %d px, interval %d) taking frames from %s, pushing to %s",
        args.worker,
        settings.backend,
        f" on {settings.runtime}" if settings.backend == "yunet" else "",
        settings.downscale,
        settings.min_face,
        settings.interval,
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
