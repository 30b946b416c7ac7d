"""``python -m capture``: one camera's capture process.

Exit codes: 0 when a file ended (or on SIGTERM/SIGINT), 2 for a problem no restart can fix (bad
arguments, a file that cannot be opened or decoded), 1 for anything else (e.g. the endpoint is in
use). A live source that fails is retried with backoff and never ends the process.
"""

from __future__ import annotations

import argparse
import logging
import sys

import zmq

from capture.preview import PreviewPublisher
from capture.sender import DropPolicy, FrameSender, default_drop_policy
from capture.settings import CameraSettings
from capture.sources import SourceError, classify_source
from capture.status_events import CameraStatusEvents
from capture.stream import CaptureConfig, FrameStream, Pacing
from emostream.health import HEALTH
from emostream.metrics import FRAMES_RECEIVED
from emostream.runtime import EXIT_FATAL, add_common_args, start_process
from emostream.settings_cli import SettingsParser
from emostream.wire import Encoding

log = logging.getLogger("capture")


def build_parser() -> argparse.ArgumentParser:
    parser = SettingsParser(
        prog="python -m capture",
        description="Grab frames from one camera and push them to the detectors.",
        settings=CameraSettings,
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
    parser.add_argument(
        "--no-shared-memory",
        dest="shared_memory",
        action="store_false",
        help="send every frame over the socket, also to workers on this machine",
    )
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    camera: CameraSettings = args.settings
    source = str(camera.source)
    kind = classify_source(source)
    policy = DropPolicy(camera.drop_policy) if camera.drop_policy else default_drop_policy(kind)
    stop = start_process(f"capture[{camera.id}]", args)
    config = CaptureConfig(
        camera=camera.id,
        source=source,
        loop=camera.loop,
        start_s=camera.start_s,
        pacing=Pacing(camera.pacing),
        max_fps=camera.fps,
        resize=camera.resize,
        decode_threads=camera.decode_threads,
        rtsp_transport=camera.rtsp_transport,
    )
    context = zmq.Context()
    status_events = CameraStatusEvents(context, args.events, camera.id, args.curve_keys) if args.events else None
    stream = FrameStream(config, stop, on_status=status_events)
    try:
        encoding = Encoding(camera.encoding)
        sender = FrameSender(
            context,
            args.frames,
            camera.id,
            policy,
            stop,
            encoding,
            camera.jpeg_quality,
            keys=args.curve_keys,
            shared_memory=args.shared_memory,
        )
    except zmq.ZMQError as exc:
        log.error("camera %s: cannot bind %s: %s", camera.id, args.frames, exc)
        if status_events:
            status_events.close()
        context.term()
        return 1
    preview = None
    if args.preview:
        try:
            preview = PreviewPublisher(context, args.preview, camera.id, args.curve_keys)
        except zmq.ZMQError as exc:
            log.error("camera %s: cannot bind the preview endpoint %s: %s", camera.id, args.preview, exc)
            sender.finish()
            if status_events:
                status_events.close()
            context.term()
            return 1
    log.info(
        "camera %s: %s source %r -> %s (drop policy %s, encoding %s)",
        camera.id,
        kind.value,
        source,
        args.frames,
        policy.value,
        camera.encoding,
    )
    HEALTH.set_ready(reason=f"bound {args.frames}")
    received = FRAMES_RECEIVED.labels(stage="capture", camera=camera.id)
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
        log.error("camera %s: %s", camera.id, exc)
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
    log.info("camera %s: stopped; %d frames sent, %d dropped", camera.id, sender.sent, sender.dropped)
    return code


if __name__ == "__main__":
    sys.exit(main())
