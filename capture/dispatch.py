"""Which detector worker gets a camera's next frame: credit-based, least-loaded dispatch.

ZeroMQ's PUSH deals messages round-robin to every peer with room in its pipe, which is not load
balancing: a worker halfway through a slow frame gets the next one as readily as an idle worker. So
workers ask for work instead. Each worker tells each camera, in ``CREDIT`` messages (see
:mod:`emostream.wire`), how many frames of that connection it has finished, how many may be unfinished
on it (its window) and how many frames it holds unfinished across all cameras (its load). The camera
sends a frame only to a worker with room in its window (frames sent minus frames the worker reports
finished), and among those to the one with the lowest load as it knows it: the worker's last reported
load plus what this camera sent it since.
Ties go to the worker that waited longest. No room anywhere means no worker can take the frame now;
the capture side's drop policy decides what happens to it (see :class:`capture.sender.DropPolicy`).

Detection interval (as DeepStream's ``interval``): a worker that announces ``interval`` N > 1
detects faces on one frame in N and tracks them on the others. Tracks live in the worker, so the
N - 1 frames after a key frame go to the same worker while it has room (they are cheap: crops only);
the next key frame goes to the least-loaded worker again.

A worker silent for ``expiry_s`` (it sends a credit at least every second, see
:data:`detector.worker.HEARTBEAT_S`) is presumed dead or hung and gets no more frames until it speaks.

Plain logic with an injectable clock, so tests drive it without sockets or sleeping.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from emostream.wire import Credit

#: A worker not heard from for this long gets no frames (three missed heartbeats).
EXPIRY_S = 3.0


@dataclass
class WorkerState:
    """What one camera knows about one worker connection."""

    name: str
    sent: int  # frames this camera sent on the connection, counted from the worker's first credit
    done: int
    window: int
    load: int
    interval: int
    last_heard: float
    shm: str | None = None  # the worker's shared-memory domain (emostream.shm.domain), if it has one
    last_used: int = -1  # dispatch tick of the last frame sent here: the tie-breaker
    sent_at_report: int = 0  # ``sent`` when the last credit arrived

    def __post_init__(self) -> None:
        self.sent_at_report = self.sent

    @property
    def in_flight(self) -> int:
        return max(0, self.sent - self.done)

    @property
    def room(self) -> int:
        return self.window - self.in_flight

    @property
    def estimated_load(self) -> int:
        """The worker's last reported load plus what this camera sent it since."""
        return self.load + self.sent - self.sent_at_report


@dataclass(frozen=True)
class Assignment:
    """Send the frame to ``peer`` (a ZeroMQ routing id); ``key``: the worker must detect on it."""

    peer: bytes
    key: bool


class Dispatcher:
    """Per-camera choice of worker for each frame. ``peer`` is the worker connection's routing id."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        expiry_s: float = EXPIRY_S,
        on_forget: Callable[[bytes, WorkerState], None] | None = None,
    ) -> None:
        self._clock = clock
        self.expiry_s = expiry_s
        #: Called with every worker forgotten (gone or silent): its frames in flight will never be reported done.
        self.on_forget = on_forget
        self.workers: dict[bytes, WorkerState] = {}
        self._ticks = itertools.count()
        self._group_peer: bytes | None = None  # the worker tracking this camera's current key frame
        self._group_frames = 0

    def update(self, peer: bytes, credit: Credit) -> bool:
        """Record a credit message; True when it comes from a worker not known before."""
        now = self._clock()
        state = self.workers.get(peer)
        if state is None:
            # A new connection (a new worker, or one that reconnected): whatever it finished before
            # came from an earlier incarnation of this camera, so start counting from there.
            self.workers[peer] = WorkerState(
                name=credit.worker,
                sent=credit.done,
                done=credit.done,
                window=credit.window,
                load=credit.load,
                interval=credit.interval,
                last_heard=now,
                shm=credit.shm,
            )
            return True
        state.done = max(state.done, credit.done)
        state.sent = max(state.sent, state.done)
        state.window = credit.window
        state.load = credit.load
        state.interval = credit.interval
        state.shm = credit.shm
        state.last_heard = now
        state.sent_at_report = state.sent
        return False

    def forget(self, peer: bytes) -> WorkerState | None:
        """Drop a worker (it went away); returns what was known of it."""
        if peer == self._group_peer:
            self._group_peer = None
        state = self.workers.pop(peer, None)
        if state is not None and self.on_forget is not None:
            self.on_forget(peer, state)
        return state

    def expire(self) -> list[WorkerState]:
        """Forget workers silent for longer than ``expiry_s``; returns them."""
        now = self._clock()
        silent = [peer for peer, state in self.workers.items() if now - state.last_heard > self.expiry_s]
        return [state for peer in silent if (state := self.forget(peer)) is not None]

    def _tracking_peer(self) -> bytes | None:
        """The worker that holds this camera's current key frame, while its group is not complete."""
        peer = self._group_peer
        group = self.workers.get(peer) if peer is not None else None
        return peer if group is not None and self._group_frames < group.interval else None

    def has_room(self) -> bool:
        """Could :meth:`assign` place a frame now (ignoring expiry)?"""
        return self._tracking_peer() is not None or any(state.room > 0 for state in self.workers.values())

    def assign(self) -> Assignment | None:
        """The worker for the next frame, already counted as sent there; None when none has room.

        The frames after a key frame go to its worker even beyond its window: they cost a few crops
        only, and sending them elsewhere would make them key frames and the detector run on each.
        So a worker holds at most ``window + interval - 1`` frames of a camera.
        """
        self.expire()
        tracking = self._tracking_peer()
        if tracking is not None:
            self._group_frames += 1
            return self._send(tracking, key=False)
        candidates = [(s.estimated_load, s.last_used, peer) for peer, s in self.workers.items() if s.room > 0]
        if not candidates:
            return None
        _, _, peer = min(candidates)
        self._group_peer, self._group_frames = peer, 1
        return self._send(peer, key=True)

    def _send(self, peer: bytes, key: bool) -> Assignment:
        state = self.workers[peer]
        state.sent += 1
        state.last_used = next(self._ticks)
        return Assignment(peer=peer, key=key)

    def unsend(self, assignment: Assignment) -> None:
        """The frame never left (the connection was gone): take back its count."""
        state = self.workers.get(assignment.peer)
        if state is not None:
            state.sent = max(state.done, state.sent - 1)
        if assignment.key and assignment.peer == self._group_peer:
            self._group_peer = None
