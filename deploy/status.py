"""A console summary of the running pipeline, read from the public event stream like any user would."""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import Counter, defaultdict

import zmq

from emostream.wire import WireError, decode_event

log = logging.getLogger("deploy")


class StatusPrinter(threading.Thread):
    """Every ``interval`` seconds logs, per camera: events/s, faces per frame, latest emotions, latency."""

    def __init__(self, endpoint: str, interval: float) -> None:
        super().__init__(name="status", daemon=True)
        self.endpoint = endpoint
        self.interval = interval
        self.stop_event = threading.Event()

    def run(self) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(self.endpoint)
        frames: Counter[str] = Counter()
        faces: Counter[str] = Counter()
        latencies: dict[str, list[float]] = defaultdict(list)
        emotions: dict[str, Counter[str]] = defaultdict(Counter)
        window_start = time.monotonic()
        while not self.stop_event.is_set():
            if sub.poll(200):
                try:
                    event = decode_event(sub.recv_multipart())
                except WireError:
                    continue
                if event.get("type") == "faces":
                    cam = event["camera"]
                    frames[cam] += 1
                    faces[cam] += len(event["faces"])
                    latencies[cam].append(event["ts_event"] - event["ts_capture"])
                    emotions[cam].update(f["emotion"] for f in event["faces"])
            elapsed = time.monotonic() - window_start
            if elapsed >= self.interval:
                if not frames:
                    log.info("status: no events yet on %s", self.endpoint)
                for cam in sorted(frames):
                    top = ", ".join(f"{e} {n}" for e, n in emotions[cam].most_common(3)) or "no faces"
                    log.info(
                        "status: %s %.1f frames/s, %.2f faces/frame, latency p50 %.0f ms, emotions: %s",
                        cam,
                        frames[cam] / elapsed,
                        faces[cam] / frames[cam],
                        1000 * statistics.median(latencies[cam]),
                        top,
                    )
                frames.clear(), faces.clear(), latencies.clear(), emotions.clear()
                window_start = time.monotonic()
        sub.close()
