"""``python -m capture``: one camera's capture process.

Exit codes: 0 when a file ended (or on SIGTERM/SIGINT), 2 for a problem no restart can fix (bad
arguments, a file that cannot be opened or decoded), 1 for anything else (e.g. the endpoint is in
use). A live source that fails is retried with backoff and never ends the process.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys

import zmq

from capture.preview import PreviewPublisher
from capture.sender import DropPolicy, FrameSender, default_drop_policy
from capture.sources import DEFAULT_DECODE_THREADS, SourceError, classify_source
from capture.status_events import CameraStatusEvents
from capture.stream import CaptureConfig, FrameStream, Pacing, parse_size
from emostream.health import HEALTH
from emostream.metrics import FRAMES_RECEIVED
from emostream.runtime import EXIT_FATAL, add_common_args, start_process
from emostream.wire import Encoding, camera_id_error

log = logging.getLogger("capture")


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _jpeg_quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not in 1..100")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capture", description="Grab frames from one camera and push them to the detectors."
    )
    parser.add_argument("--camera", required=True, help="camera id, used in every message and metric")
    parser.add_argument(
        "--source",
        required=True,
        help="'demo' (synthetic camera, 15 fps unless --fps), a camera index (0), a video file, "
        "or a URL (rtsp://, http://...)",
    )
    parser.add_argument(
        "--frames",
        required=True,
        help="ZeroMQ endpoint this process binds for the detector workers, e.g. tcp://127.0.0.1:5600",
    )
    parser.add_argument(
        "--events",
        help="the sink's input endpoint: camera up/down events go there (default: none are sent)",
    )
    parser.add_argument(
        "--preview",
        metavar="ENDPOINT",
        help="also bind a PUB socket here and publish every frame downscaled (<= 640 px wide) as JPEG, "
        "for the recorder and viewers (default: off)",
    )
    parser.add_argument("--loop", action="store_true", help="restart a video file when it ends")
    parser.add_argument(
        "--pacing",
        choices=[p.value for p in Pacing],
        default=Pacing.REALTIME.value,
        help="files, demo and VOD URLs: at their frame rate (realtime) or as fast as possible (fast); "
        "cameras and live streams pace themselves",
    )
    parser.add_argument(
        "--fps", type=_positive_float, help="send at most this many frames per second (others are skipped)"
    )
    parser.add_argument("--resize", type=_size, metavar="WxH", help="resize frames before sending")
    parser.add_argument(
        "--drop-policy",
        choices=[p.value for p in DropPolicy],
        help="when detectors lag: drop_oldest (default for live sources) or block (default for files)",
    )
    parser.add_argument(
        "--encoding",
        choices=[e.value for e in Encoding if e is not Encoding.SHARED],
        default=Encoding.RAW.value,
        help="how frames travel to workers on other machines (bgr raw, jpeg); workers on this machine read "
        "them from shared memory",
    )
    parser.add_argument("--jpeg-quality", type=_jpeg_quality, default=80, metavar="Q", help="1..100, with jpeg")
    parser.add_argument(
        "--decode-threads",
        type=int,
        default=DEFAULT_DECODE_THREADS,
        metavar="N",
        help="FFmpeg decoder threads for files and streams (default %(default)s; 0: FFmpeg's choice)",
    )
    parser.add_argument(
        "--no-shared-memory",
        dest="shared_memory",
        action="store_false",
        help="send every frame over the socket, also to workers on this machine",
    )
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = camera_id_error(args.camera)
    if problem:
        parser.error(f"--camera {args.camera!r}: {problem}")
    if args.decode_threads < 0:
        parser.error(f"--decode-threads {args.decode_threads}: must be 0 (FFmpeg's choice) or more")
    kind = classify_source(args.source)
    policy = DropPolicy(args.drop_policy) if args.drop_policy else default_drop_policy(kind)
    stop = start_process(f"capture[{args.camera}]", args)
    config = CaptureConfig(
        camera=args.camera,
        source=args.source,
        loop=args.loop,
        pacing=Pacing(args.pacing),
        max_fps=args.fps,
        resize=args.resize,
        decode_threads=args.decode_threads,
    )
    context = zmq.Context()
    status_events = CameraStatusEvents(context, args.events, args.camera, args.curve_keys) if args.events else None
    stream = FrameStream(config, stop, on_status=status_events)
    try:
        encoding = Encoding(args.encoding)
        sender = FrameSender(
            context,
            args.frames,
            args.camera,
            policy,
            stop,
            encoding,
            args.jpeg_quality,
            keys=args.curve_keys,
            shared_memory=args.shared_memory,
        )
    except zmq.ZMQError as exc:
        log.error("camera %s: cannot bind %s: %s", args.camera, args.frames, exc)
        if status_events:
            status_events.close()
        context.term()
        return 1
    preview = None
    if args.preview:
        try:
            preview = PreviewPublisher(context, args.preview, args.camera, args.curve_keys)
        except zmq.ZMQError as exc:
            log.error("camera %s: cannot bind the preview endpoint %s: %s", args.camera, args.preview, exc)
            sender.finish()
            if status_events:
                status_events.close()
            context.term()
            return 1
    log.info(
        "camera %s: %s source %r -> %s (drop policy %s, encoding %s)",
        args.camera,
        kind.value,
        args.source,
        args.frames,
        policy.value,
        args.encoding,
    )
    HEALTH.set_ready(reason=f"bound {args.frames}")
    received = FRAMES_RECEIVED.labels(stage="capture", camera=args.camera)
    code = 0
    try:
        for frame in stream:
            HEALTH.beat()
            received.inc()
            if not sender.submit(frame):
                break
            if preview:
                preview.publish(frame)
    except SourceError as exc:
        log.error("camera %s: %s", args.camera, exc)
        code = EXIT_FATAL
    finally:
        stream.close()
        sender.finish()
        if preview:
            preview.close()
        if status_events:
            status_events.close()
        # term() is what waits for the socket's linger: without it queued frames die with the process.
        context.term()
    log.info("camera %s: stopped; %d frames sent, %d dropped", args.camera, sender.sent, sender.dropped)
    return code


if __name__ == "__main__":
    sys.exit(main())
