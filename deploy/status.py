"""A console summary of the running pipeline, read from the public event stream like any user would."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import zmq

from emostream.security import CurveKeys, secure_client
from emostream.stats import percentiles
from emostream.wire import EmotionEvent, WireError, decode_event

log = logging.getLogger("deploy")
MAX_SAMPLES = 1_000_000  # latency samples kept per camera for the final summary
#: The summary leaves out each camera's first seconds: frames grabbed while downstream stages were
#: still loading (the model, the detector) wait for them and say nothing about the steady state.
WARMUP_S = 5.0


@dataclass
class CameraStats:
    frames: int = 0
    faces: int = 0
    first_event: float = 0.0
    last_event: float = 0.0
    latencies: list[float] = field(default_factory=list)
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
        if len(self.latencies) < MAX_SAMPLES:
            self.latencies.append(event.ts_event - event.ts_capture)
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

    def __init__(self, endpoint: str, interval: float, keys: CurveKeys | None = None) -> None:
        super().__init__(name="status", daemon=True)
        self.endpoint = endpoint
        self.interval = interval
        self.keys = keys  # the pipeline's client keys when the publish endpoint uses CurveZMQ
        self.stop_event = threading.Event()
        self.total: dict[str, CameraStats] = {}

    def run(self) -> None:
        sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        secure_client(sub, self.keys)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.endpoint)
        window: dict[str, CameraStats] = defaultdict(CameraStats)
        window_start = time.monotonic()
        while not self.stop_event.is_set():
            if sub.poll(200):
                try:
                    event = decode_event(sub.recv_multipart())
                except WireError:
                    continue
                if isinstance(event, EmotionEvent):
                    now = time.monotonic()
                    window[event.camera].add(event, now)
                    total = self.total.setdefault(event.camera, CameraStats(skip_before=now + WARMUP_S))
                    total.add(event, now)
            elapsed = time.monotonic() - window_start
            if self.interval and elapsed >= self.interval:
                if not window:
                    log.info("status: no events yet on %s", self.endpoint)
                for cam in sorted(window):
                    log.info("status: %s %s", cam, window[cam].describe(elapsed))
                window.clear()
                window_start = time.monotonic()
        sub.close()

    def summary(self) -> list[str]:
        """One line per camera over the run after its first WARMUP_S seconds of events."""
        stats = sorted(self.total.items())
        return [
            f"{cam} (after {WARMUP_S:.0f} s warm-up): {s.describe(s.last_event - s.first_event)}"
            for cam, s in stats
            if s.frames > 1
        ]
