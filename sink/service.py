"""The sink process: PULL events from the classifier, validate, PUB them and append them to JSON Lines."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import IO

import zmq

from emostream import metrics
from emostream.health import HEALTH
from emostream.runtime import ThrottledLog
from emostream.security import CurveKeys, secure_server
from emostream.wire import REJECT_REASONS, EmotionEvent, Event, WireError, decode_event
from sink.settings import SinkSettings

log = logging.getLogger("sink")
STAGE = "sink"
#: Events queued per subscriber: ~10 MB at most per slow subscriber, ~2 minutes of 4 cameras at 25 fps.
PUB_HWM = 10_000


class JsonlWriter:
    """Appends one event per line; flushes every line so a reader or a crash never sees half a line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = self.path.open("a", encoding="utf-8")

    def write(self, event: Event) -> None:
        self._file.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class SinkService:
    def __init__(
        self,
        pull_endpoint: str,
        settings: SinkSettings | None = None,
        context: zmq.Context | None = None,
        keys: CurveKeys | None = None,
    ) -> None:
        settings = settings or SinkSettings()
        metrics.declare_drops(STAGE, "unknown", REJECT_REASONS)
        ctx = context or zmq.Context.instance()
        self.pull = ctx.socket(zmq.PULL)
        secure_server(self.pull, keys, STAGE)  # plain without keys
        self.pull.bind(pull_endpoint)
        self.pub = ctx.socket(zmq.PUB)
        # The public endpoint: with keys only authorized subscribers complete the handshake.
        secure_server(self.pub, keys, STAGE)
        # A slow subscriber loses events beyond this many (PUB semantics) instead of growing memory;
        # it can count what it missed from the frame numbers (sink.subscribe.FrameGaps).
        self.pub.setsockopt(zmq.SNDHWM, PUB_HWM)
        self.pub.bind(settings.publish)
        self.writer = JsonlWriter(settings.jsonl) if settings.jsonl else None
        self._malformed_log = ThrottledLog(log)

    def handle(self, parts: list) -> None:
        try:
            event = decode_event(parts)
        except WireError as err:
            metrics.FRAMES_DROPPED.labels(STAGE, "unknown", err.reason).inc()
            self._malformed_log.warning("dropped malformed event: %s", err)
            return
        camera = event.camera
        is_frame = isinstance(event, EmotionEvent)  # camera up/down events are not frames
        if is_frame:
            metrics.FRAMES_RECEIVED.labels(STAGE, camera).inc()
        self.pub.send_multipart([bytes(parts[0]), bytes(parts[1])])
        if self.writer:
            self.writer.write(event)
        if isinstance(event, EmotionEvent):
            metrics.FRAMES.labels(STAGE, camera).inc()
            metrics.EVENT_LATENCY.labels(camera).observe(max(0.0, time.time() - event.ts_capture))

    def run(self, stop: threading.Event) -> None:
        HEALTH.set_ready()
        while not stop.is_set():
            HEALTH.beat()
            if self.pull.poll(100):
                while True:
                    try:
                        parts = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.handle(parts)
        # Drain what already arrived so classified events reach their files on a clean stop.
        while self.pull.poll(200):
            self.handle(self.pull.recv_multipart(copy=False))
        self.close()

    def close(self) -> None:
        if self.writer:
            self.writer.close()
        self.pull.close(linger=0)
        self.pub.close(linger=500)
