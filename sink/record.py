"""``python -m sink.record``: write one annotated video per camera from the previews and the events.

    python -m sink.record --preview tcp://127.0.0.1:5552 --events tcp://127.0.0.1:5560 --out runs/video
    python -m sink.record ... --blur-faces          # pixelate every detected face (privacy)

It subscribes to the PREVIEW stream of every capture (``python -m capture --preview``; repeat
``--preview``) and to the sink's public event stream, joins each preview with the ``faces`` event of
the same frame (camera, ``frame == seq``), draws boxes and labels (:mod:`sink.annotate`) and appends
the frame to ``OUT/<camera>-<YYYYmmdd-HHMMSS>.avi`` (MJPG; ``--format mp4``: mp4v).

Joining: a frame's event normally arrives shortly after its preview. Previews wait, per camera and in
frame order, until their event is there, for at most ``--max-wait`` seconds (and at most
:data:`MAX_PENDING` previews per camera). A frame whose event never comes is **dropped**, counted in
``emostream_frames_dropped_total{stage="recorder",reason="no_event"}``: such a frame was not classified
(dropped upstream under overload) or its event was lost, and writing it unannotated would, with
``--blur-faces``, put unblurred faces into the file. So the video holds exactly the frames the
pipeline classified, at ``--fps`` (default: the rate the previews arrive at, measured over the first
second of each camera). Written frames: ``emostream_frames_total{stage="recorder"}``.

SIGTERM/SIGINT: what already arrived is joined and written, then every file is closed properly, so
the files play. Exit codes: 0 on a clean stop, 2 when ``--out`` cannot be created or written.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import zmq

from emostream import metrics
from emostream.follow import CameraUpdates, add_follow_arg, follow_stdin
from emostream.health import HEALTH
from emostream.runtime import EXIT_FATAL, ThrottledLog, add_common_args, start_process
from emostream.security import CurveKeys, secure_client
from emostream.wire import REJECT_REASONS, EmotionEvent, Event, Preview, WireError, decode_event, decode_preview
from sink.annotate import blur_faces, draw_event

log = logging.getLogger("record")
STAGE = "recorder"
#: Previews held per camera while they wait for their event (~3 s at 25 fps, ~50 MB at 640x360).
MAX_PENDING = 75
#: Events held per camera that arrived before their preview.
MAX_EARLY_EVENTS = 256
#: Without --fps, the writer opens once this many previews (or ``RATE_WINDOW_S`` of them) are there.
RATE_FRAMES = 12
RATE_WINDOW_S = 1.0
FALLBACK_FPS = 25.0
FORMATS = {"avi": "MJPG", "mp4": "mp4v"}
#: At stop: how long to keep reading what is still in flight before the files are closed.
STOP_DRAIN_S = 0.3


class RecorderError(RuntimeError):
    """The output cannot be written: no restart can fix it."""


@dataclass
class _Pending:
    preview: Preview
    arrived: float
    event: EmotionEvent | None = None


@dataclass
class _Camera:
    name: str
    pending: OrderedDict[int, _Pending] = field(default_factory=OrderedDict)
    early: OrderedDict[int, EmotionEvent] = field(default_factory=OrderedDict)
    last_seq: int | None = None
    writer: cv2.VideoWriter | None = None
    size: tuple[int, int] | None = None
    path: Path | None = None
    fps: float | None = None
    written: int = 0
    dropped: int = 0


class FrameJoiner:
    """Join previews with the ``faces`` event of the same frame, without sockets.

    Feed it previews and events, call :meth:`flush`; each joined frame goes to :meth:`_joined` in frame
    order per camera (subclasses: the recorder writes it, ``sink.viewer`` shows it). A preview whose
    event does not come within ``max_wait_s`` is dropped (counted, reason ``no_event``).
    """

    stage = STAGE

    def __init__(self, max_wait_s: float = 2.0, max_pending: int = MAX_PENDING) -> None:
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self.cameras: dict[str, _Camera] = {}
        #: The launcher's camera set when following it (``--follow-stdin``); None: every camera seen.
        self.followed: set[str] | None = None

    def follows(self, name: str) -> bool:
        return self.followed is None or name in self.followed

    def set_cameras(self, names: Iterable[str]) -> None:
        """Follow a new camera set: forget the cameras not in it (frames still waiting for their event are
        dropped, counted); previews of cameras outside it are dropped from now on (counted, camera_removed)."""
        self.followed = set(names)
        for name in [n for n in self.cameras if n not in self.followed]:
            self._forget(self.cameras.pop(name))

    def _forget(self, cam: _Camera) -> None:
        self._flush_camera(cam, time.monotonic(), final=True)

    def _camera(self, name: str) -> _Camera:
        cam = self.cameras.get(name)
        if cam is None:
            cam = self.cameras[name] = _Camera(name)
            metrics.FRAMES.labels(self.stage, name)
            metrics.FRAMES_DROPPED.labels(self.stage, name, "no_event")
        return cam

    def add_preview(self, preview: Preview, now: float) -> None:
        if not self.follows(preview.camera):
            # A removed camera's last previews, still in flight.
            metrics.FRAMES_DROPPED.labels(self.stage, preview.camera, "camera_removed").inc()
            return
        cam = self._camera(preview.camera)
        metrics.FRAMES_RECEIVED.labels(self.stage, cam.name).inc()
        if cam.last_seq is not None and preview.seq <= cam.last_seq:
            # One publisher's previews arrive in order: a repeated or lower seq means capture restarted.
            log.info("camera %s restarted (frame %d after %d)", cam.name, preview.seq, cam.last_seq)
            self._flush_camera(cam, now, final=True)
            cam.early.clear()
        cam.last_seq = preview.seq
        cam.pending[preview.seq] = _Pending(preview, now, cam.early.pop(preview.seq, None))
        while len(cam.pending) > self.max_pending:
            self._emit(cam, cam.pending.popitem(last=False)[1])

    def add_event(self, event: Event) -> None:
        if not isinstance(event, EmotionEvent) or not self.follows(event.camera):
            return
        cam = self._camera(event.camera)
        frame = event.frame
        waiting = cam.pending.get(frame)
        if waiting is not None:
            waiting.event = event
        elif cam.last_seq is None or frame > cam.last_seq:
            cam.early[frame] = event
            while len(cam.early) > MAX_EARLY_EVENTS:
                cam.early.popitem(last=False)
        # else: its frame was dropped already (counted then) or never previewed.

    def flush(self, now: float, final: bool = False) -> None:
        """Emit every frame that is ready; ``final``: drop those still waiting for their event."""
        for cam in self.cameras.values():
            self._flush_camera(cam, now, final)

    def _hold(self, cam: _Camera, head: _Pending, now: float, final: bool) -> bool:
        """Whether ``head`` (joined or given up) should wait a little longer anyway; subclasses override."""
        return False

    def _flush_camera(self, cam: _Camera, now: float, final: bool) -> None:
        while cam.pending:
            head = next(iter(cam.pending.values()))
            if head.event is None and not final and now - head.arrived <= self.max_wait_s:
                return  # its event may still come
            if self._hold(cam, head, now, final):
                return
            cam.pending.popitem(last=False)
            self._emit(cam, head)

    def _emit(self, cam: _Camera, item: _Pending) -> None:
        if item.event is None:
            cam.dropped += 1
            metrics.FRAMES_DROPPED.labels(self.stage, cam.name, "no_event").inc()
            return
        self._joined(cam, item.preview, item.event)

    def _joined(self, cam: _Camera, preview: Preview, event: EmotionEvent) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Drop what still waits for an event."""
        self.flush(time.monotonic(), final=True)


class Recorder(FrameJoiner):
    """The join-and-write logic, without sockets: feed it previews and events, call :meth:`flush`."""

    def __init__(
        self,
        out_dir: str | Path,
        blur: bool = False,
        fps: float | None = None,
        fmt: str = "avi",
        max_wait_s: float = 2.0,
        max_pending: int = MAX_PENDING,
    ) -> None:
        super().__init__(max_wait_s, max_pending)
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecorderError(f"cannot create {self.out_dir}: {exc.strerror}") from None
        self.blur = blur
        self.fps = fps
        self.fmt = fmt

    def _hold(self, cam: _Camera, head: _Pending, now: float, final: bool) -> bool:
        measuring = cam.writer is None and self.fps is None and not final
        if measuring and len(cam.pending) < RATE_FRAMES and now - head.arrived < RATE_WINDOW_S:
            return True  # measure the camera's rate over its first previews before the writer fixes the fps
        if cam.writer is None and cam.fps is None:
            cam.fps = self.fps or self._measured_fps(cam)
        return False

    def _joined(self, cam: _Camera, preview: Preview, event: EmotionEvent) -> None:
        image = preview.image
        if not image.flags.writeable:
            image = image.copy()
        if self.blur:
            blur_faces(image, event, preview.scale)
        draw_event(image, event, preview.scale)
        size = (image.shape[1], image.shape[0])
        writer = cam.writer if cam.writer is not None else self._open(cam, size)
        if cam.size is not None and size != cam.size:  # a restarted camera with another size
            image = cv2.resize(image, cam.size, interpolation=cv2.INTER_AREA)
        writer.write(np.ascontiguousarray(image))
        cam.written += 1
        metrics.FRAMES.labels(self.stage, cam.name).inc()

    def _measured_fps(self, cam: _Camera) -> float:
        stamps = [p.preview.ts_capture for p in cam.pending.values()]
        if len(stamps) >= 2 and stamps[-1] > stamps[0]:
            return round(min(120.0, max(1.0, (len(stamps) - 1) / (stamps[-1] - stamps[0]))), 1)
        return FALLBACK_FPS

    def _open(self, cam: _Camera, size: tuple[int, int]) -> cv2.VideoWriter:
        fps = cam.fps or self.fps or self._measured_fps(cam)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.out_dir / f"{cam.name}-{stamp}.{self.fmt}"
        n = 1
        while path.exists():  # a restarted recorder never overwrites an earlier file
            path = self.out_dir / f"{cam.name}-{stamp}-{n}.{self.fmt}"
            n += 1
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*FORMATS[self.fmt]), fps, size)
        if not writer.isOpened():
            raise RecorderError(f"cannot write {path} ({FORMATS[self.fmt]} {size[0]}x{size[1]})")
        cam.writer, cam.size, cam.path, cam.fps = writer, size, path, fps
        log.info("camera %s: recording to %s (%dx%d, %.1f fps)", cam.name, path, size[0], size[1], fps)
        return writer

    def close(self) -> None:
        """Drop what still waits for an event and finish every file (playable afterwards)."""
        super().close()
        for cam in self.cameras.values():
            self._release(cam)

    def _forget(self, cam: _Camera) -> None:
        super()._forget(cam)
        self._release(cam)

    @staticmethod
    def _release(cam: _Camera) -> None:
        if cam.writer is not None:
            cam.writer.release()
            cam.writer = None
            log.info(
                "camera %s: %s closed, %d frames written, %d dropped without an event",
                cam.name,
                cam.path,
                cam.written,
                cam.dropped,
            )


class RecorderService:
    """The sockets around a :class:`FrameJoiner` (the recorder, or the viewer's): SUB to every preview
    endpoint and to the sink's events."""

    def __init__(
        self,
        recorder: FrameJoiner,
        previews: list[str],
        events: str,
        keys: CurveKeys | None = None,
        context: zmq.Context | None = None,
        updates: CameraUpdates | None = None,
    ) -> None:
        self.recorder = recorder
        self.updates = updates
        self.endpoints = list(previews)
        ctx = context or zmq.Context.instance()
        self.stage = recorder.stage
        metrics.declare_drops(self.stage, "unknown", REJECT_REASONS)
        self.previews = ctx.socket(zmq.SUB)
        secure_client(self.previews, keys)
        self.previews.setsockopt(zmq.RCVHWM, 50)
        self.previews.setsockopt(zmq.LINGER, 0)
        self.previews.setsockopt(zmq.SUBSCRIBE, b"")
        for endpoint in previews:
            self.previews.connect(endpoint)
        self.events = ctx.socket(zmq.SUB)
        secure_client(self.events, keys)
        self.events.setsockopt(zmq.LINGER, 0)
        self.events.setsockopt(zmq.SUBSCRIBE, b"")
        self.events.connect(events)
        self.poller = zmq.Poller()
        self.poller.register(self.events, zmq.POLLIN)
        self.poller.register(self.previews, zmq.POLLIN)
        self._malformed_log = ThrottledLog(log)

    def _drain(self) -> int:
        """Read everything queued on both sockets (events first, so frames find theirs); how many."""
        count = 0
        for socket, decode in ((self.events, decode_event), (self.previews, decode_preview)):
            while True:
                try:
                    parts = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                count += 1
                try:
                    message = decode(parts)
                except WireError as err:
                    metrics.FRAMES_DROPPED.labels(self.stage, "unknown", err.reason).inc()
                    self._malformed_log.warning("dropped malformed message: %s", err)
                    continue
                if isinstance(message, Preview):
                    self.recorder.add_preview(message, time.monotonic())
                else:
                    self.recorder.add_event(message)
        return count

    def set_previews(self, cameras: dict[str, str]) -> None:
        """Follow a new camera set (camera id -> preview endpoint): subscribe to new previews, let go of
        removed ones, and forget the removed cameras (the recorder closes their files)."""
        wanted = list(cameras.values())
        for endpoint in [e for e in self.endpoints if e not in wanted]:
            with contextlib.suppress(zmq.ZMQError):  # ENOENT: never connected
                self.previews.disconnect(endpoint)
        for endpoint in [e for e in wanted if e not in self.endpoints]:
            self.previews.connect(endpoint)
        self.endpoints = wanted
        self.recorder.set_cameras(cameras)
        log.info("following cameras %s", ", ".join(sorted(cameras)) or "(none)")

    def run(self, stop) -> None:
        HEALTH.set_ready(reason="subscribed")
        try:
            while not stop.is_set():
                HEALTH.beat()
                if self.updates is not None and (cameras := self.updates.take()) is not None:
                    self.set_previews(cameras)
                if self.poller.poll(100):
                    self._drain()
                self.recorder.flush(time.monotonic())
            # Stopped after the sink: take in the last events and previews still in flight, briefly.
            deadline = time.monotonic() + STOP_DRAIN_S
            while time.monotonic() < deadline and self.poller.poll(50):
                self._drain()
            self.recorder.flush(time.monotonic())
        finally:
            self.recorder.close()
            self.previews.close()
            self.events.close()


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1000:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def joiner_parser(prog: str, description: str | None, max_wait_s: float) -> argparse.ArgumentParser:
    """The options of every :class:`FrameJoiner` program (the recorder, the viewer): what it joins, face
    blurring, how long a frame waits for its event."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preview", action="append", required=True, metavar="ENDPOINT", help="a capture's preview endpoint (repeat)"
    )
    parser.add_argument("--events", required=True, metavar="ENDPOINT", help="the sink's publish endpoint")
    parser.add_argument("--blur-faces", action="store_true", help="pixelate every detected face (privacy)")
    parser.add_argument(
        "--max-wait",
        type=_positive_float,
        default=max_wait_s,
        metavar="S",
        help="how long a frame waits for its event (default: %(default)s)",
    )
    add_follow_arg(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = joiner_parser("python -m sink.record", __doc__, max_wait_s=2.0)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the videos (created)")
    parser.add_argument("--fps", type=_positive_float, default=None, help="video frame rate (default: measured)")
    parser.add_argument("--format", choices=sorted(FORMATS), default="avi", help="avi (MJPG) or mp4 (mp4v)")
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = start_process("record", args)
    try:
        recorder = Recorder(args.out, args.blur_faces, args.fps, args.format, args.max_wait)
        updates = follow_stdin(args.follow_stdin)
        RecorderService(recorder, args.preview, args.events, args.curve_keys, updates=updates).run(stop)
    except RecorderError as exc:
        log.error("%s", exc)
        return EXIT_FATAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
