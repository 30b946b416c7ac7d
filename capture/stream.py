"""Turn a source into a stream of wire Frames: pacing, fps limit, resize, looping and reconnecting.

:class:`FrameStream` is the whole grab loop minus the socket, so tests drive it in-process and
``python -m capture`` only adds the sender. Failure handling differs by source kind:

* a file that cannot be opened (or yields no frame at all) raises :class:`SourceError` -- fatal;
* a file that ends stops the stream, or reopens it with ``loop``;
* a live source (demo, camera index, URL, webrtc) that fails to open or stops delivering sets
  ``emostream_camera_up`` to 0, counts a ``read_error`` and is reopened with exponential backoff,
  forever, until ``stop`` is set. The first failure of an outage is one ERROR line with OpenCV's and
  FFmpeg's own messages beside it; each retry after it is one WARNING line, and those libraries are
  silenced (:class:`LibraryNoise`) until the camera delivers frames again.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from capture.sources import (
    DEFAULT_DECODE_THREADS,
    DEFAULT_RTSP_TRANSPORT,
    FrameSource,
    RtspTransport,
    SourceError,
    SourceKind,
    VideoCaptureSource,
    classify_source,
    make_source,
)
from emostream.metrics import CAMERA_UP, FRAMES_DROPPED
from emostream.wire import Frame

log = logging.getLogger("capture")

#: Frame rate assumed for a paced source that does not report one (rare: broken file headers).
FALLBACK_FPS = 25.0
#: The demo camera's rate when ``--fps`` does not set one.
DEFAULT_DEMO_FPS = 15.0


class Pacing(str, enum.Enum):
    """How fast a source that does not pace itself (file, demo, VOD URL) is read."""

    REALTIME = "realtime"  # at the source's nominal frame rate, like a camera would deliver it
    FAST = "fast"  # as fast as decoding and the downstream allow (batch processing, tests)


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``640x480``) into (width, height)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT, e.g. 640x480")
    width, height = int(parts[0]), int(parts[1])
    if not (1 <= width <= 8192 and 1 <= height <= 8192):
        raise ValueError(f"{text!r}: width and height must be 1..8192")
    return width, height


def resize_frame(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height); INTER_AREA when shrinking (no aliasing), bilinear when enlarging."""
    width, height = size
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class FpsLimiter:
    """Keeps at most ``max_fps`` frames per second of *source time* by skipping frames.

    Source time is media time for files and the demo (frame index / nominal fps), so a file read
    with fast pacing is subsampled exactly as it would be in realtime (every 5th frame of a 25 fps
    file at ``--fps 5``), and wall-clock time for live sources. A frame up to ``tolerance`` early is
    kept, so camera jitter does not turn 30 -> 15 fps into 10 fps: half a source frame period when
    the source rate is known (jitter below that never changes which frame is nearest the schedule),
    else a fifth of the output period. The schedule advances by whole periods, so the long-run rate
    never exceeds ``max_fps``.
    """

    def __init__(self, max_fps: float, source_fps: float | None = None) -> None:
        if max_fps <= 0:
            raise ValueError("max_fps must be positive")
        self.period = 1.0 / max_fps
        if source_fps:
            self.tolerance = min(0.5 / source_fps, 0.5 * self.period)
        else:
            self.tolerance = 0.2 * self.period
        self._next_due: float | None = None

    def accept(self, t: float) -> bool:
        if self._next_due is None:
            self._next_due = t + self.period
            return True
        if t + self.tolerance < self._next_due:
            return False
        self._next_due += self.period
        if self._next_due <= t:
            # Far behind (a stall, a reconnect): restart the schedule instead of passing a burst.
            self._next_due = t + self.period
        return True


class Pacer:
    """Sleeps so that frame ``i`` of a paced source is grabbed no earlier than ``start + i / fps``."""

    #: Behind schedule by more than this (the downstream blocked us, a slow decode): rebase the
    #: schedule instead of rushing through the backlog at full speed.
    MAX_LAG_S = 1.0

    def __init__(self, fps: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = 1.0 / fps
        self._clock = clock
        self._start: float | None = None
        self._start_index = 0

    def wait(self, index: int, stop: threading.Event) -> bool:
        """Wait until frame ``index`` is due; False when ``stop`` was set meanwhile."""
        now = self._clock()
        if self._start is None:
            self._start, self._start_index = now, index
            return not stop.is_set()
        due = self._start + (index - self._start_index) * self.period
        if now - due > self.MAX_LAG_S:
            self._start, self._start_index = now, index
            return not stop.is_set()
        if due > now:
            return not stop.wait(due - now)
        return not stop.is_set()


#: FFmpeg's log levels (libavutil/log.h).
AV_LOG_QUIET = -8


@functools.cache
def _ffmpeg_avutil() -> ctypes.CDLL | None:
    """The libavutil OpenCV's FFmpeg backend uses (loaded with cv2), to set FFmpeg's log level; None
    where it cannot be found (not Linux, or an OpenCV built without FFmpeg)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            path = next((line.split()[-1] for line in maps if "libavutil" in line), None)
        return ctypes.CDLL(path) if path else None  # the already loaded library: same handle
    except (OSError, AttributeError):
        return None


class LibraryNoise:
    """OpenCV's WARN lines and FFmpeg's messages while a dead live source is retried.

    They repeat on every attempt ("can't open camera by index", "Connection refused"): useful once,
    noise after. :meth:`quiet` (after the first failed attempt) lowers both libraries' log levels,
    :meth:`restore` (once frames flow) brings them back, so a later outage explains itself again.
    Both levels are per process, and a capture process serves one camera.
    """

    def __init__(self) -> None:
        self._saved: tuple[int, int | None] | None = None

    def quiet(self) -> None:
        if self._saved is not None:
            return
        avutil = _ffmpeg_avutil()
        self._saved = (cv2.utils.logging.getLogLevel(), avutil.av_log_get_level() if avutil else None)
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        if avutil:
            avutil.av_log_set_level(AV_LOG_QUIET)

    def restore(self) -> None:
        if self._saved is None:
            return
        cv_level, av_level = self._saved
        self._saved = None
        cv2.utils.logging.setLogLevel(cv_level)
        avutil = _ffmpeg_avutil()
        if avutil and av_level is not None:
            avutil.av_log_set_level(av_level)


class Backoff:
    """Exponential retry delays for a live source: 0.5, 1, 2, 4, 8, 10, 10, ... seconds."""

    def __init__(self, initial_s: float = 0.5, cap_s: float = 10.0) -> None:
        self.initial_s = initial_s
        self.cap_s = cap_s
        self._next = initial_s

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap_s)
        return delay

    def reset(self) -> None:
        self._next = self.initial_s


@dataclass
class CaptureConfig:
    """Everything about one camera except where its frames go."""

    camera: str
    source: str
    loop: bool = False
    #: Files: seconds into the file where the first pass starts (later passes of a looping file start at 0).
    start_s: float = 0.0
    #: Realtime by default, so a file or the demo behaves like the camera it stands in for. Sources
    #: that pace themselves (camera index, live URL) ignore it.
    pacing: Pacing = Pacing.REALTIME
    max_fps: float | None = None
    resize: tuple[int, int] | None = None
    #: FFmpeg decoder threads for files and streams (see capture.sources.DEFAULT_DECODE_THREADS).
    decode_threads: int = DEFAULT_DECODE_THREADS
    #: rtsp:// sources: tcp or udp (see capture.sources.DEFAULT_RTSP_TRANSPORT).
    rtsp_transport: RtspTransport = DEFAULT_RTSP_TRANSPORT

    @property
    def kind(self) -> SourceKind:
        return classify_source(self.source)


class FrameStream:
    """Iterate :class:`emostream.wire.Frame` objects from one camera until the source ends or ``stop``.

    Every frame gets ``ts_capture = time.time()`` right after it is grabbed and ``seq`` counting the
    frames this stream yielded (0, 1, 2, ...), so a gap in ``seq`` downstream means a frame was lost
    after capture, never a frame skipped on purpose by the fps limit.
    """

    def __init__(
        self,
        config: CaptureConfig,
        stop: threading.Event | None = None,
        source: FrameSource | None = None,
        backoff: Backoff | None = None,
        on_status: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        #: Told ("up", why) when frames start flowing and ("down", why) when a live source fails.
        self.on_status = on_status
        self._up: bool | None = None
        self.kind = config.kind
        self.stop = stop or threading.Event()
        self.pacing = config.pacing
        demo_fps = config.max_fps or DEFAULT_DEMO_FPS
        self.source = source or make_source(
            config.source,
            self.kind,
            demo_fps=demo_fps,
            decode_threads=config.decode_threads,
            rtsp_transport=config.rtsp_transport,
        )
        # A webrtc slot is a local socket, cheap to poll: retry at least every second, so a new browser's
        # frames bring the camera up at once rather than after a 10 s backoff.
        self.backoff = backoff or (Backoff(cap_s=1.0) if self.kind is SourceKind.WEBRTC else Backoff())
        self.limiter: FpsLimiter | None = None  # built at the first open, once the source's fps is known
        self.grabbed = 0  # frames grabbed over all (re)openings: the paced sources' timeline
        self.seq = 0
        self._camera_up = CAMERA_UP.labels(camera=config.camera)
        self._read_errors = FRAMES_DROPPED.labels(stage="capture", camera=config.camera, reason="read_error")
        self._camera_up.set(0)
        self.noise = LibraryNoise()
        self._failures = 0  # failed attempts in the current outage
        self._down_since = 0.0

    def __iter__(self) -> Iterator[Frame]:
        pacer: Pacer | None = None
        opened_once = False
        while not self.stop.is_set():
            try:
                self.source.open()
            except SourceError as exc:
                if not self.kind.is_live:
                    raise
                self._live_failure(f"cannot open: {exc}")
                continue
            if not opened_once or self.kind.is_live:
                log.info(
                    "camera %s: opened %s source %r (%s fps, %s pacing)",
                    self.config.camera,
                    self.kind.value,
                    self.config.source,
                    f"{self.source.fps:g}" if self.source.fps else "unknown",
                    "own" if self.source.self_paced else self.pacing.value,
                )
            if not opened_once and self.config.start_s:
                self._seek_start()
            opened_once = True
            fps = self.source.fps or FALLBACK_FPS
            if self.config.max_fps and self.limiter is None:
                self.limiter = FpsLimiter(self.config.max_fps, source_fps=self.source.fps)
            if self.source.self_paced or self.pacing is Pacing.FAST:
                pacer = None
            elif pacer is None or self.kind.is_live:
                # Kept across a file's loops, so the first frame of the next pass is one period
                # after the last one; rebuilt for a reopened live stream whose rate may differ.
                pacer = Pacer(fps)
            delivered = yield from self._read_open_source(pacer, fps)
            self.source.close()
            if self.stop.is_set():
                break
            if self.kind.is_live:
                self._live_failure("stopped delivering frames")
                continue
            if delivered == 0:
                # An undecodable file (or one that decodes to nothing): looping would spin forever.
                raise SourceError(f"video file {self.config.source!r} yields no frames")
            if not self.config.loop:
                log.info("camera %s: end of file; %d frames delivered", self.config.camera, self.seq)
                return
            log.debug("camera %s: end of file, looping", self.config.camera)
        self.source.close()

    def _seek_start(self) -> None:
        if not isinstance(self.source, VideoCaptureSource) or self.kind is not SourceKind.FILE:
            raise SourceError(f"start_s: only a video file can start {self.config.start_s:g} s in")
        self.source.seek(self.config.start_s)
        log.info("camera %s: starting %g s into %r", self.config.camera, self.config.start_s, self.config.source)

    def _read_open_source(self, pacer: Pacer | None, fps: float) -> Generator[Frame, None, int]:
        """Yield frames until the open source ends or fails; returns how many frames it delivered
        (frames skipped by the fps limit included: they were read fine)."""
        delivered = 0
        while not self.stop.is_set():
            if pacer is not None and not pacer.wait(self.grabbed, self.stop):
                break
            if not self.source.grab():
                break
            ts_capture = time.time()
            source_time = time.monotonic() if self.source.self_paced else self.grabbed / fps
            self.grabbed += 1
            if self.limiter is not None and not self.limiter.accept(source_time):
                # Skipped by configuration, not lost: deliberately not counted as a drop, so that an
                # alert on emostream_frames_dropped_total means trouble, never a configured --fps.
                delivered += 1
                continue
            image = self.source.retrieve()
            if image is None:
                break
            delivered += 1
            if self.config.resize:
                image = resize_frame(image, self.config.resize)
            self._camera_up.set(1)
            if self._set_status(True, "delivering frames"):
                self.noise.restore()
                self._failures = 0
            self.backoff.reset()
            yield Frame(camera=self.config.camera, seq=self.seq, ts_capture=ts_capture, image=image)
            self.seq += 1
        return delivered

    def _set_status(self, up: bool, why: str) -> bool:
        """Report a change of state (not every frame) to ``on_status``; True when it changed."""
        if self._up is up:
            return False
        self._up = up
        if self.on_status is not None:
            self.on_status("up" if up else "down", why)
        return True

    def _live_failure(self, what: str) -> None:
        self._camera_up.set(0)
        self._set_status(False, what)
        self._read_errors.inc()
        delay = self.backoff.next_delay()
        self._failures += 1
        now = time.monotonic()
        if self._failures == 1:
            self._down_since = now
            log.error(
                "camera %s: %s source %r %s; retrying in %.1f s, backing off to %.0f s "
                "(OpenCV's and FFmpeg's messages are silenced until it is up)",
                self.config.camera,
                self.kind.value,
                self.config.source,
                what,
                delay,
                self.backoff.cap_s,
            )
            self.noise.quiet()
        else:
            log.warning(
                "camera %s: still down (%d attempts in %.0f s): %s; retrying in %.1f s",
                self.config.camera,
                self._failures,
                now - self._down_since,
                what,
                delay,
            )
        self.stop.wait(delay)

    def close(self) -> None:
        self.source.close()
        self.noise.restore()
