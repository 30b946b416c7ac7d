"""``python -m classifier``: the batching emotion classifier process."""

from __future__ import annotations

import argparse
import sys

from classifier.tracking import DEFAULT_IOU, DEFAULT_MAX_AGE, DEFAULT_WINDOW
from emostream.modelfile import TTA_MODES, ModelFileError
from emostream.runtime import EXIT_FATAL, add_common_args, start_process


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _iou(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m classifier", description=__doc__)
    parser.add_argument("--pull", required=True, help="endpoint to bind for faces from the detectors")
    parser.add_argument("--push", required=True, help="endpoint of the sink to send events to")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--max-batch", type=int, default=64, help="faces per forward pass, at most")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a face waits for a batch")
    parser.add_argument(
        "--fixed-wait",
        action="store_true",
        help="always wait --max-wait-ms for a partial batch (default: close it early when the measured arrival "
        "rate says no other face will come before the deadline)",
    )
    parser.add_argument(
        "--max-age-ms",
        type=float,
        default=1000.0,
        help="drop faces of live cameras captured longer ago than this (counted, reason 'stale'); 0: never. "
        "Frames of files are never dropped",
    )
    parser.add_argument(
        "--smoothing-window",
        type=_positive_int,
        default=DEFAULT_WINDOW,
        help="frames each face track's emotion scores are smoothed over (an exponential moving average with "
        "the weight of an N-frame mean, see classifier/tracking.py); 1: no smoothing (default: %(default)s)",
    )
    parser.add_argument(
        "--track-iou",
        type=_iou,
        default=DEFAULT_IOU,
        help="least IoU between a face and a track's last box for the face to continue the track (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--track-max-age",
        type=_non_negative_int,
        default=DEFAULT_MAX_AGE,
        help="frames of its camera a track survives without a matching face before it is dropped (default: "
        "%(default)s)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--no-bf16", action="store_true", help="run in float32")
    parser.add_argument(
        "--tta",
        default="none",
        choices=TTA_MODES,
        help="test-time augmentation: flip = mean of each face's and its mirror image's logits (twice the "
        "compute, +0.5 points accuracy for the shipped model) (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0: torch's default, one per core). 1 by default: the classifier shares the "
        "cores with detectors and capture, and an OpenMP pool whose threads get preempted stalls every batch",
    )
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = start_process("classifier", args)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from classifier.model import EmotionModel
    from classifier.service import ClassifierService

    try:
        model = EmotionModel(args.model, device=args.device, bf16=not args.no_bf16, tta=args.tta)
    except (ModelFileError, RuntimeError) as exc:
        print(f"classifier: {exc}", file=sys.stderr)
        return EXIT_FATAL
    model.warm_up()
    service = ClassifierService(
        model,
        args.pull,
        args.push,
        args.max_batch,
        args.max_wait_ms,
        adaptive_wait=not args.fixed_wait,
        max_age_ms=args.max_age_ms,
        keys=args.curve_keys,
        smoothing_window=args.smoothing_window,
        track_iou=args.track_iou,
        track_max_age=args.track_max_age,
    )
    service.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
