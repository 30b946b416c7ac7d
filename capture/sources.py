"""Where frames come from: a synthetic demo camera, a camera index, a video file or a stream URL.

Every source follows OpenCV's own two-step protocol, :meth:`FrameSource.grab` then
:meth:`FrameSource.retrieve`, because grabbing is the moment a frame is captured (its timestamp) and
because a frame skipped by the fps limit then never pays for the BGR conversion in ``retrieve``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import cv2
import numpy as np

if TYPE_CHECKING:
    import zmq

#: ``scheme://...``; what OpenCV's FFmpeg backend opens as a network stream (rtsp, http(s), rtmp, udp...).
URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: FFmpeg waits this long to open a stream or to receive data before giving up; without these a dead
#: RTSP camera can hang ``VideoCapture`` forever, and then neither retries nor SIGTERM get a chance.
STREAM_OPEN_TIMEOUT_MS = 10_000
STREAM_READ_TIMEOUT_MS = 10_000

#: How an RTSP camera's RTP packets travel. tcp by default: inside the RTSP connection they survive
#: NAT and firewalls, are never lost to a full socket buffer (a lost UDP packet is a broken frame), and
#: a server that goes away is seen at once as a closed connection instead of a read timeout.
RtspTransport = Literal["tcp", "udp"]
DEFAULT_RTSP_TRANSPORT: RtspTransport = "tcp"
#: The environment variable OpenCV's FFmpeg backend reads its demuxer options from when it opens a
#: capture ("key;value|key;value"); this OpenCV (4.x) has no open parameter for the RTSP transport.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

#: ``webrtc`` in a config; the launcher hands the capture ``webrtc:ENDPOINT``, the ingest's bridge for it.
WEBRTC_SOURCE = "webrtc"
#: A webrtc camera that sends no frame for this long has gone away (browser closed, network gone).
#: 2 s proved too short on a loaded 2-core machine: a browser still connected was reported down.
WEBRTC_READ_TIMEOUT_S = 5.0

DEMO_SIZE = (640, 480)  # width, height of the synthetic camera


def is_rtsp(source: str) -> bool:
    return source.lower().startswith(("rtsp://", "rtsps://"))


def ffmpeg_capture_options(existing: str | None, rtsp_transport: RtspTransport) -> str:
    """``OPENCV_FFMPEG_CAPTURE_OPTIONS`` for an RTSP camera: ``existing`` (the user's own options, kept)
    with ``rtsp_transport`` set to this camera's transport.

    Without the variable OpenCV asks FFmpeg for ``rtsp_flags;prefer_tcp`` (TCP where the server offers
    it); with it, for exactly what it says, so the transport is always written out.
    """
    kept = [item for item in (existing or "").split("|") if item.strip() and item.split(";", 1)[0] != "rtsp_transport"]
    return "|".join([*kept, f"rtsp_transport;{rtsp_transport}"])


class SourceError(RuntimeError):
    """A source that cannot be opened (missing file, unreachable URL, absent camera)."""


class SourceKind(str, enum.Enum):
    """What ``--source`` names; decides the defaults for pacing, drop policy and failure handling."""

    DEMO = "demo"  # the synthetic camera: live-like, never ends
    DEVICE = "device"  # a local camera by index: live, paced by the camera itself
    FILE = "file"  # a video file: finite (or looping), paced by the capture process
    URL = "url"  # a network stream through FFmpeg: live, reconnects when it drops
    WEBRTC = "webrtc"  # a browser's webcam, relayed by capture.webrtc_ingest: live, self-paced

    @property
    def is_live(self) -> bool:
        """Live sources lose frames rather than fall behind; files lose nothing and may wait."""
        return self is not SourceKind.FILE


def classify_source(source: str) -> SourceKind:
    """Tell what kind of source a ``--source`` string names (no I/O)."""
    if source == "demo":
        return SourceKind.DEMO
    if source == WEBRTC_SOURCE or source.startswith(WEBRTC_SOURCE + ":"):
        return SourceKind.WEBRTC
    if source.isdigit():
        return SourceKind.DEVICE
    if URL_PATTERN.match(source):
        return SourceKind.URL
    return SourceKind.FILE


@runtime_checkable
class FrameSource(Protocol):
    """A frame producer. ``grab`` returns False when no frame came (end of file or a failure)."""

    #: Nominal frames per second, or None when the source does not say.
    fps: float | None
    #: True when the source delivers at its own pace (a camera, a live stream): never sleep for it.
    self_paced: bool

    def open(self) -> None: ...

    def grab(self) -> bool: ...

    def retrieve(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


def _nominal_fps(cap: cv2.VideoCapture) -> float | None:
    fps = cap.get(cv2.CAP_PROP_FPS)
    # FFmpeg reports 0, NaN or absurd values (90000: a time base) for streams that do not say.
    if not math.isfinite(fps) or fps <= 0 or fps > 1000:
        return None
    return float(fps)


def file_seconds(path: str | Path) -> float | None:
    """How long a video file plays (frame count over nominal fps), or None when the file does not say."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        fps, count = _nominal_fps(cap), cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    return count / fps if fps and math.isfinite(count) and count > 0 else None


#: FFmpeg decoder threads per file or stream camera. One: a 1280x720 H.264 file then decodes far faster
#: than real time on one core, with less CPU per frame than FFmpeg's default of one thread per core
#: (measured: docs/benchmarks.md, "Measurements behind defaults and constants"), and a pipeline runs
#: more cameras than cores, where decoder threads only compete with the other stages. 0: FFmpeg's choice.
DEFAULT_DECODE_THREADS = 1


class VideoCaptureSource:
    """A camera index, a file or a URL, read through ``cv2.VideoCapture``."""

    def __init__(
        self,
        source: str,
        kind: SourceKind,
        decode_threads: int = DEFAULT_DECODE_THREADS,
        rtsp_transport: RtspTransport = DEFAULT_RTSP_TRANSPORT,
    ) -> None:
        if kind in (SourceKind.DEMO, SourceKind.WEBRTC):
            raise ValueError(f"the {kind.value} source has a class of its own")
        if decode_threads < 0:
            raise ValueError("decode_threads must be 0 (FFmpeg's choice) or more")
        self.source = source
        self.kind = kind
        self.decode_threads = decode_threads
        self.rtsp_transport = rtsp_transport
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.self_paced = kind is SourceKind.DEVICE
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        self.close()
        if self.kind is SourceKind.FILE and not os.path.isfile(self.source):
            raise SourceError(f"video file {self.source!r} does not exist")
        if self.kind is SourceKind.DEVICE:
            cap = cv2.VideoCapture(int(self.source))
        elif self.kind is SourceKind.URL:
            with self.ffmpeg_options():
                cap = cv2.VideoCapture(
                    self.source,
                    cv2.CAP_FFMPEG,
                    [
                        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                        STREAM_OPEN_TIMEOUT_MS,
                        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                        STREAM_READ_TIMEOUT_MS,
                        *self._thread_params(),
                    ],
                )
        else:
            cap = cv2.VideoCapture(self.source, cv2.CAP_FFMPEG, self._thread_params())
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"OpenCV cannot open {self.kind.value} source {self.source!r}")
        if self.kind is SourceKind.DEVICE:
            # A camera's driver queue otherwise holds several old frames: that is pure latency.
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.fps = _nominal_fps(cap)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None
        if self.kind is SourceKind.URL:
            # A stream with a known length is a file served over the network (VOD): FFmpeg reads it
            # as fast as the network allows, so it needs pacing like a file. A live stream (no
            # length) arrives at the camera's pace; sleeping on top would only build up latency.
            self.self_paced = self.frame_count is None
        self._cap = cap

    @contextlib.contextmanager
    def ffmpeg_options(self) -> Iterator[str | None]:
        """While a URL opens: this camera's FFmpeg options in the environment, where OpenCV reads them
        (an RTSP source's transport); the previous value comes back after, so the setting stays this
        camera's even when one process opens several. Yields the options in force (None: untouched)."""
        if not is_rtsp(self.source):
            yield os.environ.get(FFMPEG_OPTIONS_ENV)
            return
        saved = os.environ.get(FFMPEG_OPTIONS_ENV)
        os.environ[FFMPEG_OPTIONS_ENV] = options = ffmpeg_capture_options(saved, self.rtsp_transport)
        try:
            yield options
        finally:
            if saved is None:
                os.environ.pop(FFMPEG_OPTIONS_ENV, None)
            else:
                os.environ[FFMPEG_OPTIONS_ENV] = saved

    def seek(self, seconds: float) -> None:
        """Move an open file to ``seconds`` in: the next frame grabbed is the one shown then."""
        if self._cap is None:
            raise SourceError(f"{self.kind.value} source {self.source!r} is not open")
        if self.frame_count and self.fps and seconds >= self.frame_count / self.fps:
            length = self.frame_count / self.fps
            raise SourceError(f"start_s {seconds:g} is past the end of {self.source!r} ({length:.2f} s long)")
        if not self._cap.set(cv2.CAP_PROP_POS_MSEC, seconds * 1000.0):
            raise SourceError(f"cannot seek {self.source!r} to {seconds:g} s")

    def _thread_params(self) -> list[int]:
        return [cv2.CAP_PROP_N_THREADS, self.decode_threads] if self.decode_threads else []

    def grab(self) -> bool:
        if self._cap is None:
            return False
        return bool(self._cap.grab())

    def retrieve(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, image = self._cap.retrieve()
        return image if ok and image is not None and image.size else None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def demo_portrait() -> np.ndarray:
    """The portrait the demo camera animates: Grace Hopper, sample data shipped inside matplotlib."""
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"cannot read matplotlib's sample portrait at {path}")
    return image


@dataclass(frozen=True)
class DemoMotion:
    """How the demo camera moves: slow enough that consecutive frames look like one live scene."""

    pan_period_s: float = 12.0  # left-right sweep
    zoom_period_s: float = 9.0  # in-out breathing
    light_period_s: float = 5.0  # brightness wave
    scale_min: float = 0.62  # portrait height / canvas height at the far end of the zoom
    scale_max: float = 0.80
    light_amplitude: float = 18.0  # grey levels


class DemoSource:
    """A synthetic camera: matplotlib's Grace Hopper portrait panning and zooming on a 640x480 canvas.

    Frame ``i`` depends only on ``i`` and ``fps`` (animation time = i / fps), so tests can render any
    frame directly with :meth:`render`. The face stays frontal and 100-140 px wide, which the Haar
    cascade (scaleFactor 1.2, minNeighbors 5) found on all of 60 frames sampled over 36 s.
    """

    def __init__(self, fps: float = 15.0, size: tuple[int, int] = DEMO_SIZE, motion: DemoMotion | None = None) -> None:
        self.fps: float | None = fps
        self.self_paced = False  # it renders instantly; the capture loop paces it like a file
        self.size = size
        self.motion = motion or DemoMotion()
        self._portrait: np.ndarray | None = None
        self._grabbed = 0  # frames grabbed so far; the last grabbed one is frame _grabbed - 1

    def open(self) -> None:
        if self._portrait is None:
            self._portrait = demo_portrait()

    def render(self, index: int) -> np.ndarray:
        """The frame at animation step ``index`` (BGR uint8, height x width x 3)."""
        if self._portrait is None:
            self.open()
        assert self._portrait is not None
        m = self.motion
        width, height = self.size
        t = index / (self.fps or 15.0)
        ph, pw = self._portrait.shape[:2]
        zoom = 0.5 - 0.5 * math.cos(2 * math.pi * t / m.zoom_period_s)
        scale = (m.scale_min + (m.scale_max - m.scale_min) * zoom) * height / ph
        free_x = width - pw * scale  # horizontal room left for the pan
        pan = 0.5 - 0.5 * math.cos(2 * math.pi * t / m.pan_period_s)
        x0 = free_x * (0.1 + 0.8 * pan)
        y0 = (height - ph * scale) * 0.5 + 8 * math.sin(2 * math.pi * t / m.zoom_period_s)
        warp = np.array([[scale, 0.0, x0], [0.0, scale, y0]], dtype=np.float32)
        frame = cv2.warpAffine(
            self._portrait,
            warp,
            (width, height),
            flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(60, 52, 46),  # dull blue-grey "wall" behind the portrait
        )
        light = m.light_amplitude * math.sin(2 * math.pi * t / m.light_period_s)
        frame = cv2.convertScaleAbs(frame, alpha=1.0, beta=light)
        # A frame counter in a corner makes frames distinguishable when debugging a stream.
        cv2.putText(frame, f"demo {index}", (8, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (220, 220, 220), 1)
        return frame

    def grab(self) -> bool:
        # Time runs on with every grab, also for frames the fps limit skips, as with a real camera.
        self._grabbed += 1
        return True

    def retrieve(self) -> np.ndarray | None:
        return self.render(self._grabbed - 1) if self._grabbed else None

    def close(self) -> None:
        pass


class WebRTCSource:
    """A browser's webcam: ``capture.webrtc_ingest`` decodes the browser's WebRTC video and PUSHes
    ``[header JSON, raw BGR]`` to the endpoint in ``webrtc:ENDPOINT`` (it binds, this PULLs).

    No frame for :data:`WEBRTC_READ_TIMEOUT_S` (no browser in this slot, or it went away) ends a
    ``grab`` with False: the live-failure path then reports the camera down and retries.
    """

    def __init__(self, source: str, read_timeout_s: float = WEBRTC_READ_TIMEOUT_S) -> None:
        self.source = source
        self.endpoint = source.partition(":")[2]
        self.fps: float | None = None
        self.self_paced = True
        self.read_timeout_s = read_timeout_s
        self._socket: zmq.Socket | None = None
        self._image: np.ndarray | None = None

    def open(self) -> None:
        if not self.endpoint:
            raise SourceError("a webrtc source needs its bridge endpoint: webrtc:tcp://HOST:PORT")
        if self._socket is not None:
            return  # kept across reopenings: frames of a browser that arrives meanwhile wait there
        import zmq

        sock: zmq.Socket = zmq.Context.instance().socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, 4)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self._socket = sock

    def grab(self) -> bool:
        self._image = None
        if self._socket is None or not self._socket.poll(int(self.read_timeout_s * 1000)):
            return False
        header, data = self._socket.recv_multipart()[:2]
        meta = json.loads(header)
        width, height = int(meta["width"]), int(meta["height"])
        if len(data) != width * height * 3:
            return False
        self._image = np.frombuffer(data, np.uint8).reshape(height, width, 3)
        return True

    def retrieve(self) -> np.ndarray | None:
        return self._image

    def close(self) -> None:
        # The socket stays open (see open); it is closed with the process.
        self._image = None


def make_source(
    source: str,
    kind: SourceKind | None = None,
    demo_fps: float = 15.0,
    decode_threads: int = DEFAULT_DECODE_THREADS,
    rtsp_transport: RtspTransport = DEFAULT_RTSP_TRANSPORT,
) -> FrameSource:
    """The source object for a ``--source`` string; nothing is opened yet."""
    kind = kind or classify_source(source)
    if kind is SourceKind.DEMO:
        return DemoSource(fps=demo_fps)
    if kind is SourceKind.WEBRTC:
        return WebRTCSource(source)
    return VideoCaptureSource(source, kind, decode_threads=decode_threads, rtsp_transport=rtsp_transport)
