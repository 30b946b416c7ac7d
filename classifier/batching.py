"""Dynamic batching of faces from every camera into one forward pass.

The batcher is plain logic with an injectable clock so tests can drive it without sleeping.
Policy: frames join the open batch whole and in arrival order; the batch closes once it holds at
least ``max_batch`` faces, or its oldest frame has waited ``max_wait_ms``, or it holds no face at all
(frames without faces need no inference and must not wait). A frame is never split across batches,
so a single frame with more faces than ``max_batch`` makes one larger batch. Because batches close in
arrival order and keep their frames in order, results per camera leave in the order frames came in.

Adaptive wait (``adaptive=True``, what the classifier process uses): ``max_wait_ms`` becomes an upper
bound. The batcher measures the face arrival rate over the last second, and closes a partial batch as
soon as no further face is expected before its deadline (rate x time left < 1). At low load a face then
goes through at once instead of waiting out ``max_wait_ms`` for company that is not coming; at high load
the batch waits and fills. The rate needs at least ``MIN_RATE_SPAN_S`` of history; before that the
batcher waits the full ``max_wait_ms``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emostream.wire import Faces


@dataclass(slots=True)
class Batch:
    """Frames whose faces go through the model together; ``crops`` concatenates their crops."""

    frames: list[Faces]
    crops: np.ndarray

    @property
    def face_count(self) -> int:
        return int(self.crops.shape[0])

    def split(self, rows: np.ndarray) -> list[np.ndarray]:
        """Cut per-face model outputs ``rows`` (face_count, ...) back into one array per frame."""
        bounds = np.cumsum([len(f) for f in self.frames])[:-1]
        return np.split(rows, bounds)


RATE_WINDOW_S = 1.0  # arrival-rate history for the adaptive wait
MIN_RATE_SPAN_S = 0.25  # less history than this: no rate estimate yet


class FaceBatcher:
    def __init__(
        self,
        max_batch: int,
        max_wait_ms: float,
        clock: Callable[[], float] = time.monotonic,
        adaptive: bool = False,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self._clock = clock
        self._pending: deque[tuple[float, Faces]] = deque()
        self._pending_faces = 0
        self.adaptive = adaptive
        self._arrivals: deque[tuple[float, int]] = deque()  # (time, faces) of recent frames with faces

    def __len__(self) -> int:
        """Frames waiting."""
        return len(self._pending)

    @property
    def pending_faces(self) -> int:
        return self._pending_faces

    def add(self, faces: Faces) -> None:
        now = self._clock()
        self._pending.append((now, faces))
        self._pending_faces += len(faces)
        if self.adaptive and len(faces):
            self._arrivals.append((now, len(faces)))

    def arrival_rate(self) -> float | None:
        """Faces per second arriving over the last RATE_WINDOW_S; None without enough history."""
        now = self._clock()
        while self._arrivals and now - self._arrivals[0][0] > RATE_WINDOW_S:
            self._arrivals.popleft()
        span = now - self._arrivals[0][0] if self._arrivals else 0.0
        if len(self._arrivals) < 2 or span < MIN_RATE_SPAN_S:
            return None
        # Faces that came after the oldest sample, over the time since it.
        return sum(n for _, n in list(self._arrivals)[1:]) / span

    def _deadline(self) -> float:
        """When the open batch must close: max_wait after its oldest frame, earlier when adaptive and
        no face is expected before then (from that moment on, waiting only adds latency)."""
        deadline = self._pending[0][0] + self.max_wait_s
        rate = self.arrival_rate() if self.adaptive else None
        if rate:
            deadline -= 1.0 / rate
        return deadline

    def seconds_until_due(self) -> float | None:
        """How long the caller may wait for more input before :meth:`ready`; None when empty."""
        if not self._pending:
            return None
        if self.ready():
            return 0.0
        return max(0.0, self._deadline() - self._clock())

    def ready(self) -> bool:
        if not self._pending:
            return False
        if self._pending_faces >= self.max_batch or self._pending_faces == 0:
            return True
        return self._clock() >= self._deadline()

    def take(self) -> Batch:
        """Close the batch: the oldest frames up to ``max_batch`` faces (at least one frame)."""
        if not self._pending:
            raise IndexError("no frames pending")
        frames: list[Faces] = []
        count = 0
        while self._pending:
            n = len(self._pending[0][1])
            if frames and count + n > self.max_batch:
                break
            frames.append(self._pending.popleft()[1])
            count += n
        self._pending_faces -= count
        crops = [f.crops for f in frames if len(f)]
        if crops:
            stacked = np.concatenate(crops) if len(crops) > 1 else crops[0]
        else:
            size = frames[0].crops.shape[1] if frames[0].crops.ndim == 3 else 48
            stacked = np.empty((0, size, size), dtype=np.uint8)
        return Batch(frames=frames, crops=stacked)
