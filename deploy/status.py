"""A console summary of the running pipeline, read from the public event stream like any user would.

Cameras report their state on the same stream (``camera`` events, "up" or "down" with a reason), so a
camera that never opened shows up in the status lines and the final summary with capture's reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import zmq

from emostream.security import CurveKeys, secure_client
from emostream.stats import WARMUP_S, Reservoir, percentiles
from emostream.wire import CameraEvent, EmotionEvent, WireError, decode_event

log = logging.getLogger("deploy")
#: Latency samples kept per camera for the final summary: a uniform sample of the whole run, so the
#: launcher's memory stays flat however long it runs (a list of every latency grew without end).
LATENCY_SAMPLES = 10_000


@dataclass
class CameraStats:
    frames: int = 0
    faces: int = 0
    first_event: float = 0.0
    last_event: float = 0.0
    latencies: Reservoir = field(default_factory=lambda: Reservoir(LATENCY_SAMPLES))
    emotions: Counter[str] = field(default_factory=Counter)
    skip_before: float | None = None  # events arriving earlier are ignored (warm-up)

    def add(self, event: EmotionEvent, now: float) -> None:
        if self.skip_before is not None and now < self.skip_before:
            return
        if not self.frames:
            self.first_event = now
        self.last_event = now
        self.frames += 1
        self.faces += len(event.faces)
        self.latencies.add(event.ts_event - event.ts_capture)
        self.emotions.update(f.emotion for f in event.faces)

    def describe(self, seconds: float) -> str:
        p50, p95, p99 = percentiles(self.latencies, scale=1000.0).values()
        top = ", ".join(f"{e} {n}" for e, n in self.emotions.most_common(3)) or "no faces"
        return (
            f"{self.frames} frames, {self.frames / max(seconds, 1e-9):.1f} frames/s, "
            f"{self.faces / self.frames:.2f} faces/frame, latency p50/p95/p99 {p50:.0f}/{p95:.0f}/{p99:.0f} ms, "
            f"top emotions: {top}"
        )


class StatusPrinter(threading.Thread):
    """Logs per-camera throughput, faces and latency every ``interval`` s, and a summary at the end.

    Latency here is capture timestamp to classification (``ts_event - ts_capture``), as carried by
    the events; the sink's histogram adds the last hop.
    """

    def __init__(
        self, endpoint: str, interval: float, keys: CurveKeys | None = None, cameras: list[str] | None = None
    ) -> None:
        super().__init__(name="status", daemon=True)
        self.endpoint = endpoint
        self.interval = interval
        self.keys = keys  # the pipeline's client keys when the publish endpoint uses CurveZMQ
        self.cameras = list(cameras or [])  # the configured cameras: those without frames are named too
        self.stop_event = threading.Event()
        self.total: dict[str, CameraStats] = {}
        #: camera -> (its last status, the reason, when it arrived on our clock)
        self.states: dict[str, tuple[str, str, float]] = {}
        self.ever_up: set[str] = set()
        #: Cameras whose capture failed for good (set by the launcher) -> its last stderr line.
        self.failed: dict[str, str] = {}
        #: Cameras removed while running (the control API): no longer reported.
        self.removed: set[str] = set()
        self._new_cameras: list[str] | None = None

    def run(self) -> None:
        sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        secure_client(sub, self.keys)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        # The sink binds after the launcher starts; a camera's "down" event published before this socket
        # joined is not lost: the sink sends every camera's last state again to each new subscription.
        # Retrying the connection every 10 ms instead of ZeroMQ's 100 ms just joins sooner.
        sub.setsockopt(zmq.RECONNECT_IVL, 10)
        sub.connect(self.endpoint)
        window: dict[str, CameraStats] = defaultdict(CameraStats)
        window_start = time.monotonic()
        while not self.stop_event.is_set():
            self._apply_cameras()
            if sub.poll(200):
                try:
                    event = decode_event(sub.recv_multipart())
                except WireError:
                    continue
                now = time.monotonic()
                if isinstance(event, EmotionEvent):
                    self.ever_up.add(event.camera)
                    window[event.camera].add(event, now)
                    total = self.total.setdefault(event.camera, CameraStats(skip_before=now + WARMUP_S))
                    total.add(event, now)
                elif isinstance(event, CameraEvent):
                    self.on_camera_event(event, now)
            elapsed = time.monotonic() - window_start
            if self.interval and elapsed >= self.interval:
                silent = self.silent_cameras(set(window), time.monotonic())
                if not window and not any(down for _, down in silent):
                    # Starting (the model still loading): one line, not one per camera.
                    log.info("status: no events yet on %s", self.endpoint)
                    silent = []
                for cam in sorted(window):
                    log.info("status: %s %s", cam, window[cam].describe(elapsed))
                for line, _ in silent:
                    log.warning("status: %s", line)
                window.clear()
                window_start = time.monotonic()
        sub.close()

    def set_cameras(self, cameras: list[str]) -> None:
        """Follow a new camera set (the control API): removed cameras leave the status lines. Any thread;
        applied by the status thread, which owns the per-camera state."""
        self._new_cameras = list(cameras)
        if not self.is_alive():
            self._apply_cameras()

    def _apply_cameras(self) -> None:
        cameras, self._new_cameras = self._new_cameras, None
        if cameras is None:
            return
        gone = set(self.cameras) - set(cameras)
        self.removed = (self.removed | gone) - set(cameras)
        self.cameras = list(cameras)
        for cam in gone:
            self.states.pop(cam, None)
            self.failed.pop(cam, None)

    def on_camera_event(self, event: CameraEvent, now: float) -> None:
        if event.camera in self.removed:
            return  # a removed camera's "down" as its capture stopped
        previous = self.states.get(event.camera)
        since = previous[2] if previous and previous[0] == event.status else now
        self.states[event.camera] = (event.status, event.reason, since)
        if event.status == "up":
            self.ever_up.add(event.camera)

    def silent_cameras(self, delivering: set[str], now: float) -> list[tuple[str, bool]]:
        """(line, whether it is down) per camera that delivered nothing in the window: down (and why),
        or not heard of yet."""
        lines = []
        for cam in sorted(set(self.cameras) | set(self.states)):
            status, reason, since = self.states.get(cam, ("", "", now))
            if cam in delivering or cam in self.failed or status == "up":
                continue  # a camera that failed for good was reported once, by the supervisor
            if status == "down":
                never = "" if cam in self.ever_up else ", never came up"
                lines.append((f"{cam} down for {now - since:.0f} s{never}: {reason}", True))
            elif cam not in self.ever_up:
                lines.append((f"{cam}: no events yet", False))
        return lines

    def never_up(self) -> list[str]:
        """A line per camera that never delivered a frame to the event stream this run, and why."""
        lines = []
        for cam in sorted(set(self.cameras) | set(self.states)):
            if cam in self.ever_up:
                continue
            status, reason, _ = self.states.get(cam, ("", "", 0.0))
            if cam in self.failed:
                why = f"its capture failed for good: {self.failed[cam] or 'see its log'}"
            elif status == "down":
                why = f"last reported: {reason}"
            else:
                why = "no frame or camera event of it was published"
            lines.append(f"{cam} never came up ({why})")
        return lines

    def summary(self) -> list[str]:
        """One line per camera over the run after its first WARMUP_S seconds of events."""
        stats = sorted(self.total.items())
        return [
            f"{cam} (after {WARMUP_S:.0f} s warm-up): {s.describe(s.last_event - s.first_event)}"
            for cam, s in stats
            if s.frames > 1
        ]
