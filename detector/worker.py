"""The detector worker's socket loop: ask cameras for frames, find faces, PUSH Faces to the classifier.

The worker connects one DEALER socket to each camera's ROUTER and asks for work with ``CREDIT``
messages (see :mod:`capture.dispatch`): it takes at most ``window`` frames in flight per camera and
reports its load, so each camera sends its next frame to the least-loaded worker. Frames taken off
the sockets wait in one FIFO, bounded by the credits to at most ``window`` x cameras, and are processed
in arrival order.

Cameras on the same machine put their frames in shared memory (the worker announces its
shared-memory domain in its credits, see :mod:`emostream.shm`); the worker reads them in place.

A worker never dies of its input: a message that is not a valid frame is counted in
``emostream_frames_dropped{stage="detector",camera="unknown",reason=<WireError.reason>}``, logged
and skipped; a frame the detector fails on is counted with reason ``detect_error``; a shared-memory
frame whose slot was reused while this worker held it (the camera presumed the worker dead) with
reason ``overwritten``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

import zmq

from detector.pipeline import FaceExtractor
from detector.settings import DetectorSettings
from emostream import shm
from emostream.follow import CameraUpdates
from emostream.health import HEALTH
from emostream.metrics import FACES, FRAMES, FRAMES_DROPPED, FRAMES_RECEIVED, STAGE_SECONDS, declare_drops
from emostream.runtime import FRAME_SOCKET_BUFFER, ThrottledLog
from emostream.security import CurveKeys, secure_client
from emostream.wire import REJECT_REASONS, Credit, WireError, decode_frame, encode_credit, encode_faces

log = logging.getLogger("detector")

#: A credit goes to every camera at least this often, even when idle: a camera that restarted learns
#: of the worker, and a worker that stops sending is known to be dead or hung (capture.dispatch.EXPIRY_S).
HEARTBEAT_S = 1.0
#: Faces messages (a few KB each) queued towards the classifier before sending blocks.
SNDHWM = 16
POLL_MS = 100
#: How soon a credit the camera's socket refused is sent again. Until the camera hears of a finished
#: frame it sends this worker nothing, so waiting for the next heartbeat would idle both for up to a second.
#: Each refusal in a row doubles the wait, up to POLL_MS: a camera that is down costs no more wake-ups.
CREDIT_RETRY_MS = 5
#: Faces still queued at shutdown get this long to reach the classifier.
CLOSE_LINGER_MS = 1000


@dataclass
class CameraLink:
    """One camera connection: its DEALER socket and how many of its frames this worker finished."""

    endpoint: str
    socket: zmq.Socket
    done: int = 0
    #: When the last credit could not be queued (the socket's send queue was full): how long to wait
    #: before sending one again; 0 when none is pending.
    retry_ms: int = 0


class DetectorWorker:
    """Owns the sockets and the loop; ``run`` returns when ``stop`` is set."""

    def __init__(
        self,
        context: zmq.Context,
        camera_endpoints: list[str],
        push_endpoint: str,
        extractor: FaceExtractor,
        stop: threading.Event,
        worker_id: int = 0,
        settings: DetectorSettings | None = None,
        keys: CurveKeys | None = None,
        updates: CameraUpdates | None = None,
    ) -> None:
        # Only the credit window and the interval matter here; the extractor holds the detection settings.
        settings = settings or DetectorSettings()
        self.extractor = extractor
        self.stop = stop
        self.window = settings.window
        self.interval = settings.interval
        declare_drops("detector", "unknown", REJECT_REASONS)
        self.worker_id = worker_id
        self.name = f"detector-{worker_id}-{os.getpid()}"
        self.shared = shm.SharedFrames()
        self.shm_domain = shm.domain()
        self.context = context
        self.keys = keys
        self.updates = updates
        self.links: list[CameraLink] = []
        self.poller = zmq.Poller()
        self._by_socket: dict[zmq.Socket, CameraLink] = {}
        for endpoint in camera_endpoints:
            self._connect(endpoint)
        self.push = context.socket(zmq.PUSH)
        secure_client(self.push, keys)
        self.push.setsockopt(zmq.SNDHWM, SNDHWM)
        self.push.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        self.push.connect(push_endpoint)
        self.queue: deque[tuple[CameraLink, list[zmq.Frame]]] = deque()
        self.processed = 0
        self.rejected = 0
        self._stage_seconds = STAGE_SECONDS.labels(stage="detector")
        self._malformed_log = ThrottledLog(log)
        self._last_heartbeat = 0.0

    def _connect(self, endpoint: str) -> CameraLink:
        # Connect, not bind: cameras come and go, each binds its own endpoint.
        sock = self.context.socket(zmq.DEALER)
        secure_client(sock, self.keys)  # plain without keys
        sock.setsockopt(zmq.RCVBUF, FRAME_SOCKET_BUFFER)
        sock.setsockopt(zmq.SNDHWM, 4)  # credits only; newer ones supersede older ones
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        link = CameraLink(endpoint, sock)
        self.links.append(link)
        self.poller.register(sock, zmq.POLLIN)
        self._by_socket[sock] = link
        return link

    def set_cameras(self, endpoints: list[str]) -> None:
        """Follow a new camera set (``--follow-stdin``): connect to new cameras, close removed ones.

        Frames of a removed camera already queued here are still processed: their events are due."""
        wanted = set(endpoints)
        for link in [link for link in self.links if link.endpoint not in wanted]:
            self.poller.unregister(link.socket)
            del self._by_socket[link.socket]
            self.links.remove(link)
            link.socket.close()
            log.info("worker %d: camera at %s removed", self.worker_id, link.endpoint)
        known = {link.endpoint for link in self.links}
        for endpoint in endpoints:
            if endpoint not in known:
                self._credit(self._connect(endpoint))
                log.info("worker %d: taking frames from %s too", self.worker_id, endpoint)

    @property
    def load(self) -> int:
        """Frames held and not yet finished (the one being processed is still in the queue)."""
        return len(self.queue)

    def _credit(self, link: CameraLink) -> None:
        credit = Credit(self.name, link.done, self.window, self.load, self.interval, self.shm_domain)
        # Again: the queue is full (not connected yet, or its I/O thread starved of CPU for a moment). A
        # credit carries absolute values, so the one sent on the retry supersedes the one refused.
        try:
            link.socket.send_multipart(encode_credit(credit), flags=zmq.NOBLOCK)
            link.retry_ms = 0
        except zmq.Again:
            link.retry_ms = min(POLL_MS, max(CREDIT_RETRY_MS, 2 * link.retry_ms))

    def _credit_all(self) -> None:
        for link in self.links:
            self._credit(link)
        self._last_heartbeat = time.monotonic()

    def _receive(self, timeout_ms: int) -> None:
        """Move every frame waiting on the camera sockets into the queue."""
        for sock, _ in self.poller.poll(timeout_ms):
            link = self._by_socket[sock]
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.queue.append((link, parts))

    def run(self) -> None:
        HEALTH.set_ready()
        self._credit_all()
        while not self.stop.is_set():
            HEALTH.beat()
            if self.updates is not None and (cameras := self.updates.take()) is not None:
                self.set_cameras(list(cameras.values()))
            pending = [link for link in self.links if link.retry_ms]
            self._receive(0 if self.queue else min([POLL_MS, *(link.retry_ms for link in pending)]))
            if time.monotonic() - self._last_heartbeat >= HEARTBEAT_S:
                self._credit_all()
            else:
                for link in pending:
                    self._credit(link)
            if not self.queue:
                continue
            link, parts = self.queue[0]
            self.handle(parts)
            self.queue.popleft()
            link.done += 1
            # Room again on the frame's connection, and a lower load for every camera to see.
            self._credit_all()

    def handle(self, parts: list[zmq.Frame]) -> None:
        """Process one received message; never raises for bad input."""
        started = time.perf_counter()
        try:
            frame = decode_frame(parts, self.shared)
        except WireError as exc:
            self.rejected += 1
            FRAMES_DROPPED.labels(stage="detector", camera="unknown", reason=exc.reason).inc()
            self._malformed_log.warning("worker %d: dropping malformed message: %s", self.worker_id, exc)
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
        slot = frame.shared
        if slot is not None and not self.shared.current(slot.name, slot.offset, slot.stamp):
            FRAMES_DROPPED.labels(stage="detector", camera=frame.camera, reason="overwritten").inc()
            self._malformed_log.warning(
                "worker %d: %s frame %d was overwritten in shared memory", self.worker_id, frame.camera, frame.seq
            )
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
            HEALTH.beat()
        return False

    def close(self) -> None:
        for link in self.links:
            link.socket.close()
        self.push.close()
