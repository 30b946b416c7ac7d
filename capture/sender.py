"""The capture side of the frames socket: a ROUTER socket that binds, behind a one-frame slot.

The grab loop hands every frame to :meth:`FrameSender.submit`; a sender thread moves it to the
detector worker that :class:`capture.dispatch.Dispatcher` picks (least-loaded, credit-based) as soon
as a worker has room. What happens when none has room is the :class:`DropPolicy`.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import deque
from dataclasses import replace

import numpy as np
import zmq

from capture.dispatch import Dispatcher, WorkerState
from capture.settings import CameraSettings
from capture.sources import SourceKind
from emostream import shm
from emostream.health import HEALTH
from emostream.metrics import FRAMES, FRAMES_DROPPED, declare_drops
from emostream.runtime import FRAME_SOCKET_BUFFER, ThrottledLog
from emostream.security import CurveKeys, secure_server
from emostream.wire import REJECT_REASONS, Encoding, Frame, SharedSlot, WireError, decode_credit, encode_frame

log = logging.getLogger("capture")

#: Frames ZeroMQ may queue per connected worker. Credits keep the real number at the worker's window
#: (1 by default, plus the frames a key frame's worker tracks); this only has to exceed any window.
SNDHWM = 64
#: How long a blocked wait lasts before it looks at the stop event again (SIGTERM stays prompt).
POLL_MS = 100
#: After the last frame of a file: how long close() may take to hand queued frames to the detectors.
FINAL_LINGER_MS = 10_000
#: After a stop request: queued frames are stale, do not hold the shutdown for them.
STOP_LINGER_MS = 200


class DropPolicy(str, enum.Enum):
    """What capture does when the detectors do not keep up (no worker has room for the next frame).

    Modelled on the buffer filling strategies of Roboflow inference's video sources: a live camera
    cannot be paused, a file can.
    """

    #: Never block the grab loop. Keep only the newest frame pending until a detector worker has room
    #: for it (see :mod:`capture.dispatch`); every older frame it replaces
    #: is thrown away and counted in ``emostream_frames_dropped{stage="capture",reason="overload"}``.
    #: Latency stays bounded, throughput adapts to the detectors. Default for live sources.
    DROP_OLDEST = "drop_oldest"
    #: Wait until the downstream takes the frame; lose nothing. The grab loop (and with it the
    #: source) slows down to the detectors' pace. Default for files.
    BLOCK = "block"


def default_drop_policy(kind: SourceKind) -> DropPolicy:
    return DropPolicy.DROP_OLDEST if kind.is_live else DropPolicy.BLOCK


class FrameSlot:
    """A mailbox for one frame between the grab loop and the sender thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False

    def put_wait(self, frame: Frame, stop: threading.Event) -> bool:
        """Wait until the slot is empty, then place ``frame``; False (frame not placed) if stopped."""
        with self._cond:
            while self._frame is not None and not stop.is_set():
                self._cond.wait(POLL_MS / 1000)
            if stop.is_set():
                return False
            self._frame = frame
            self._cond.notify_all()
            return True

    def put_replace(self, frame: Frame) -> Frame | None:
        """Place ``frame`` at once; return the older pending frame it replaced, if any."""
        with self._cond:
            replaced, self._frame = self._frame, frame
            self._cond.notify_all()
            return replaced

    def take(self, timeout_s: float) -> Frame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout_s)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """No more frames will come; the sender exits once the slot is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def drained(self) -> bool:
        with self._cond:
            return self._closed and self._frame is None


class SharedSlots:
    """The camera's shared-memory ring and the slots each worker holds (see :mod:`emostream.shm`).

    A slot taken for a frame goes back when the worker reports the frame done (frames of one
    connection finish in the order they were sent), when the send fails, or when the worker is
    forgotten. Used by the sender thread only.
    """

    def __init__(self, camera: str, enabled: bool = True) -> None:
        self.camera = camera
        self.domain = shm.domain() if enabled else None
        self.ring: shm.FrameRing | None = None
        self._held: dict[bytes, deque[int | None]] = {}
        if self.domain is not None:
            for name in shm.remove_stale_rings(camera):
                log.info("camera %s: removed the shared-memory ring %s of an earlier run", camera, name)

    def usable_by(self, worker: WorkerState | None) -> bool:
        return self.domain is not None and worker is not None and worker.shm == self.domain

    def place(self, image: np.ndarray, stamp: int) -> tuple[int, SharedSlot] | None:
        """Copy ``image`` into a free slot; None (send the bytes instead) when no slot is free."""
        ring = self._ring_for(image)
        slot = ring.acquire() if ring is not None else None
        if ring is None or slot is None:
            return None
        offset = ring.write(slot, np.ascontiguousarray(image), stamp)
        return slot, SharedSlot(ring.name, offset, stamp)

    def _ring_for(self, image: np.ndarray) -> shm.FrameRing | None:
        if self.ring is not None and not self.ring.fits(image):
            if self.ring.in_use:
                return None  # larger frames (a camera that came back at a higher resolution) go as bytes for now
            self.ring.close()
            self.ring = None
        if self.ring is None:
            try:
                self.ring = shm.FrameRing(self.camera, image.nbytes)
            except OSError as exc:
                log.warning("camera %s: no shared memory for frames (%s); they go over the socket", self.camera, exc)
                self.domain = None
                return None
            log.info("camera %s: frames to local workers go through /dev/shm/%s", self.camera, self.ring.name)
        return self.ring

    def sent(self, peer: bytes, slot: int | None) -> None:
        self._held.setdefault(peer, deque()).append(slot)

    def unused(self, slot: int) -> None:
        if self.ring is not None:
            self.ring.release(slot)

    def finished(self, peer: bytes, count: int) -> None:
        """The worker reported ``count`` more frames done: their slots are free."""
        held = self._held.get(peer)
        if not held:
            return
        for _ in range(min(count, len(held))):
            slot = held.popleft()
            if slot is not None and self.ring is not None:
                self.ring.release(slot)

    def forget(self, peer: bytes, _state: WorkerState | None = None) -> None:
        held = self._held.pop(peer, None)
        for slot in held or ():
            if slot is not None and self.ring is not None:
                self.ring.release(slot)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None


class FrameSender:
    """Binds a ROUTER socket on ``endpoint`` and sends submitted frames from its own thread.

    Detector workers connect a DEALER socket each and send credits (see :mod:`capture.dispatch`);
    a frame goes to the least-loaded worker with room, never to one that did not ask for it. Workers
    on this machine get it through shared memory unless ``shared_memory`` is False (:class:`SharedSlots`).
    """

    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        camera: str,
        policy: DropPolicy,
        stop: threading.Event,
        encoding: Encoding = Encoding.RAW,
        jpeg_quality: int = CameraSettings.model_fields["jpeg_quality"].default,
        dispatcher: Dispatcher | None = None,
        keys: CurveKeys | None = None,
        shared_memory: bool = True,
    ) -> None:
        self.camera = camera
        self.policy = policy
        self.stop = stop
        self.encoding = encoding
        self.jpeg_quality = jpeg_quality
        self.shared = SharedSlots(camera, enabled=shared_memory)
        self.dispatcher = dispatcher or Dispatcher()
        self.dispatcher.on_forget = self.shared.forget
        self.socket = context.socket(zmq.ROUTER)
        secure_server(self.socket, keys, "capture")  # plain without keys
        # Sending to a worker that is gone must fail (EHOSTUNREACH), not vanish silently.
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self.socket.setsockopt(zmq.SNDBUF, FRAME_SOCKET_BUFFER)
        self.socket.setsockopt(zmq.LINGER, STOP_LINGER_MS)
        self.socket.bind(endpoint)  # raises zmq.ZMQError (e.g. address in use); caller reports it
        self.sent = 0
        self.dropped = 0
        self._slot = FrameSlot()
        self._malformed_log = ThrottledLog(log)
        self._frames_sent = FRAMES.labels(stage="capture", camera=camera)
        self._frames_dropped = FRAMES_DROPPED.labels(stage="capture", camera=camera, reason="overload")
        declare_drops("capture", "unknown", REJECT_REASONS)
        # Non-daemon would keep a crashed main thread's process alive; the main thread joins it.
        self._thread = threading.Thread(target=self._run, name=f"send-{camera}", daemon=True)
        self._thread.start()

    def submit(self, frame: Frame) -> bool:
        """Hand over one frame; False when stopping (the frame was not taken)."""
        if self.policy is DropPolicy.BLOCK:
            return self._slot.put_wait(frame, self.stop)
        if self._slot.put_replace(frame) is not None:
            self._count_drop()
        return not self.stop.is_set()

    def _count_drop(self) -> None:
        self.dropped += 1
        self._frames_dropped.inc()

    def _read_credits(self) -> None:
        """Apply every credit message waiting on the socket (non-blocking)."""
        while True:
            try:
                peer, *parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                credit = decode_credit(parts)
            except WireError as exc:
                FRAMES_DROPPED.labels(stage="capture", camera="unknown", reason=exc.reason).inc()
                self._malformed_log.warning("camera %s: ignoring malformed credit message: %s", self.camera, exc)
                continue
            known = self.dispatcher.workers.get(peer)
            done_before = known.done if known is not None else None
            if self.dispatcher.update(peer, credit):
                how = "shared memory" if self.shared.usable_by(self.dispatcher.workers[peer]) else "socket"
                log.info("camera %s: detector worker %s connected (frames via %s)", self.camera, credit.worker, how)
            elif done_before is not None:
                self.shared.finished(peer, self.dispatcher.workers[peer].done - done_before)
        for state in self.dispatcher.expire():
            log.warning("camera %s: detector worker %s silent, sending it nothing", self.camera, state.name)

    def _run(self) -> None:
        held: Frame | None = None
        while not self.stop.is_set():
            # This loop wakes every POLL_MS even while the source is down and reconnecting.
            HEALTH.beat()
            self._read_credits()
            if held is None:
                # Wait for room *before* taking a frame: meanwhile the slot keeps being refreshed
                # with the newest frame (drop_oldest), so what finally goes out is never stale.
                if not self.dispatcher.has_room():
                    if self._slot.drained:
                        return
                    self.socket.poll(POLL_MS, zmq.POLLIN)
                    continue
                held = self._slot.take(POLL_MS / 1000)
                if held is None:
                    if self._slot.drained:
                        return
                    continue
                self._read_credits()  # the freshest loads for the choice
            assignment = self.dispatcher.assign()
            if assignment is None:
                # The worker with room went silent meanwhile. BLOCK keeps the frame; DROP_OLDEST lets
                # it go, a newer frame will come.
                if self.policy is DropPolicy.DROP_OLDEST:
                    self._count_drop()
                    held = None
                continue
            # A copy with this dispatch's flags: the frame itself is shared with the preview thread.
            outgoing = replace(held, key=assignment.key, droppable=self.policy is DropPolicy.DROP_OLDEST)
            placed = None
            try:
                if self.shared.usable_by(self.dispatcher.workers.get(assignment.peer)):
                    placed = self.shared.place(held.image, held.seq + 1)
                parts = encode_frame(outgoing, self.encoding, self.jpeg_quality, slot=placed[1] if placed else None)
            except ValueError:
                # Cannot happen for frames from FrameStream; if it does, lose this frame, not the thread.
                self.dispatcher.unsend(assignment)
                if placed is not None:
                    self.shared.unused(placed[0])
                log.exception("camera %s: cannot encode frame %d, skipping it", self.camera, held.seq)
                held = None
                continue
            try:
                self.socket.send_multipart([assignment.peer, *parts], flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:
                # EHOSTUNREACH: the worker disconnected after its last credit. Try another worker.
                self.dispatcher.unsend(assignment)
                if placed is not None:
                    self.shared.unused(placed[0])
                if exc.errno == zmq.EHOSTUNREACH:
                    gone = self.dispatcher.forget(assignment.peer)
                    log.warning("camera %s: detector worker %s went away", self.camera, gone.name if gone else "?")
                else:
                    log.warning("camera %s: send failed (%s), retrying", self.camera, exc)
                    self.socket.poll(POLL_MS, zmq.POLLOUT)
                continue
            self.shared.sent(assignment.peer, placed[0] if placed is not None else None)
            self.sent += 1
            self._frames_sent.inc()
            held = None

    def finish(self) -> None:
        """Send what is pending (unless stopping), then close the socket.

        At the end of a file the socket lingers up to ``FINAL_LINGER_MS`` so frames still queued in
        ZeroMQ reach the detectors before the process exits; after a stop request it does not wait.
        """
        self._slot.close()
        while self._thread.is_alive():
            self._thread.join(POLL_MS / 1000)
        linger = STOP_LINGER_MS if self.stop.is_set() else FINAL_LINGER_MS
        self.socket.close(linger=linger)
        # After the socket: workers that received a slot's address have the ring mapped by now.
        self.shared.close()
