"""The detector worker's socket loop: PULL frames from every camera, PUSH Faces to the classifier.

A worker never dies of its input: a message that is not a valid frame is counted in
``emostream_frames_dropped{stage="detector",camera="unknown",reason=<WireError.reason>}``, logged
and skipped; a frame the detector fails on is counted with reason ``detect_error``.
"""

from __future__ import annotations

import logging
import threading
import time

import zmq

from detector.pipeline import FaceExtractor
from emostream.health import HEALTH
from emostream.metrics import FACES, FRAMES, FRAMES_DROPPED, FRAMES_RECEIVED, STAGE_SECONDS, declare_drops
from emostream.wire import REJECT_REASONS, WireError, decode_frame, encode_faces

log = logging.getLogger("detector")

#: Frames queued per camera connection on the receiving side. Small: a frame waiting here is
#: latency, and when this worker is busy the capture side should see back-pressure (and drop the
#: oldest frame of a live camera) or hand the frame to an idle worker instead. One frame waiting
#: while another is processed leaves no idle gap.
RCVHWM = 1
#: The kernel's TCP receive buffer (bytes; Linux doubles it). Autotuned loopback buffers hold many
#: raw frames, seconds of stale video under overload (see capture.sender.SNDBUF for measurements).
RCVBUF = 128 * 1024
#: Faces messages (a few KB each) queued towards the classifier before sending blocks.
SNDHWM = 16
POLL_MS = 100
#: Faces still queued at shutdown get this long to reach the classifier.
CLOSE_LINGER_MS = 1000


class DetectorWorker:
    """Owns the two sockets and the loop; ``run`` returns when ``stop`` is set."""

    def __init__(
        self,
        context: zmq.Context,
        pull_endpoints: list[str],
        push_endpoint: str,
        extractor: FaceExtractor,
        stop: threading.Event,
        worker_id: int = 0,
    ) -> None:
        self.extractor = extractor
        self.stop = stop
        declare_drops("detector", "unknown", REJECT_REASONS)
        self.worker_id = worker_id
        self.pull = context.socket(zmq.PULL)
        self.pull.setsockopt(zmq.RCVHWM, RCVHWM)
        self.pull.setsockopt(zmq.RCVBUF, RCVBUF)
        self.pull.setsockopt(zmq.LINGER, 0)
        for endpoint in pull_endpoints:
            # Connect, not bind: cameras come and go, each binds its own endpoint, and ZeroMQ
            # fair-queues between all connected cameras so a fast one cannot starve the others.
            self.pull.connect(endpoint)
        self.push = context.socket(zmq.PUSH)
        self.push.setsockopt(zmq.SNDHWM, SNDHWM)
        self.push.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self.push.connect(push_endpoint)
        self.processed = 0
        self.rejected = 0
        self._stage_seconds = STAGE_SECONDS.labels(stage="detector")

    def run(self) -> None:
        HEALTH.set_ready()
        while not self.stop.is_set():
            HEALTH.beat()
            if not self.pull.poll(POLL_MS, zmq.POLLIN):
                continue
            parts = self.pull.recv_multipart(copy=False)
            self.handle(parts)

    def handle(self, parts: list[zmq.Frame]) -> None:
        """Process one received message; never raises for bad input."""
        started = time.perf_counter()
        try:
            frame = decode_frame(parts)
        except WireError as exc:
            self.rejected += 1
            FRAMES_DROPPED.labels(stage="detector", camera="unknown", reason=exc.reason).inc()
            log.warning("worker %d: dropping malformed message: %s", self.worker_id, exc)
            return
        FRAMES_RECEIVED.labels(stage="detector", camera=frame.camera).inc()
        try:
            faces = self.extractor.process(frame)
            message = encode_faces(faces)
        except Exception:
            # An OpenCV failure on one odd frame must not take the worker (and all cameras) down.
            FRAMES_DROPPED.labels(stage="detector", camera=frame.camera, reason="detect_error").inc()
            log.exception("worker %d: detection failed on %s frame %d", self.worker_id, frame.camera, frame.seq)
            return
        self._stage_seconds.observe(time.perf_counter() - started)
        if not self._send(message):
            return
        self.processed += 1
        FRAMES.labels(stage="detector", camera=frame.camera).inc()
        # inc(0) too: the series then exists (at 0) from a camera's first frame, so rate() works.
        FACES.labels(camera=frame.camera).inc(len(faces))

    def _send(self, message: list) -> bool:
        """Send, waiting while the classifier is busy, but never past a stop request."""
        while not self.stop.is_set():
            if self.push.poll(POLL_MS, zmq.POLLOUT):
                try:
                    self.push.send_multipart(message, flags=zmq.NOBLOCK, copy=False)
                    return True
                except zmq.Again:
                    continue
        return False

    def close(self) -> None:
        self.pull.close()
        self.push.close()
