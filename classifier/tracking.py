"""Face tracks across frames and per-track smoothing of the emotion scores.

Plain logic, no sockets: the classifier calls :meth:`Tracker.update` once per frame, in the order
frames leave the batcher, with the frame's boxes and the model's probabilities, and gets back a track
id per face and the smoothed probabilities.

Tracking (per camera): each frame's boxes are matched to the camera's live tracks by IoU with the
Hungarian algorithm (``scipy.optimize.linear_sum_assignment`` on ``1 - IoU``, so the pairing with the
largest total overlap wins: two faces passing each other keep their ids as long as each one overlaps its
own previous box more than the other's). A pair below ``iou_threshold`` is no match. A face without a
match starts a new track; ids are increasing integers per camera starting at 1 and never reused. A track
that no face matched survives ``max_age`` frames of its camera (counted by frame sequence number, so
frames lost upstream count as missed too) and is dropped after that. The default, 25 frames (1 s at 25
fps), bridges a head turned away for a moment (as measured on faces.mp4: docs/benchmarks.md,
"Measurements behind defaults and constants") while the IoU threshold against the last box keeps another
face from taking the track over. Tracks live in the classifier process: when it restarts, ids start
again at 1.

Smoothing (per track): an exponential moving average of the probability vectors with the weight of a
``window``-frame average, ``alpha = 2 / (window + 1)`` (pandas' ``ewm(span=window)``; its centre of mass,
``(window - 1) / 2`` frames, equals that of a plain mean over the last ``window`` frames):

    smoothed_t = smoothed_prev + a * (raw_t - smoothed_prev),   a = 1 - (1 - alpha) ** gap

where ``gap`` is the number of frames since the track was last seen (1 normally): after a gap the old
state has decayed as if those frames had come. A new track starts at its first raw vector, and
``window = 1`` is the identity (``alpha = 1``). The result is a convex combination of probability
vectors, so it is a probability vector again. An EMA keeps one vector per track, needs no history
buffer, and reacts at once (partly) to a real change instead of after a full window.

Out-of-order frames: with several detector workers a camera's frames can reach the classifier slightly
out of order. A frame that is not newer than the newest one seen for its camera (lower or equal
``seq``, captured no later) is matched against the current tracks *without changing them*: matched
faces take the track's id and the smoothed vector one EMA step from the track's state would give
(not stored); unmatched ones get a fresh id of their own (no track is created from the past) and
their raw scores. A frame with a lower ``seq`` but a *later* capture time means the camera restarted
(its sequence starts again at 0): its tracks are dropped and tracking starts over (ids keep
increasing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifier.settings import ClassifierSettings
from emostream.boxes import iou_matrix

#: The classifier settings' defaults (classifier/settings.py), for trackers built without settings.
DEFAULT_WINDOW: int = ClassifierSettings.model_fields["smoothing_window"].default
DEFAULT_IOU: float = ClassifierSettings.model_fields["track_iou"].default
DEFAULT_MAX_AGE: int = ClassifierSettings.model_fields["track_max_age"].default


def match(previous: np.ndarray, current: np.ndarray, iou_threshold: float) -> list[tuple[int, int]]:
    """Pairs (previous index, current index) maximising total IoU, each pair at least ``iou_threshold``."""
    if len(previous) == 0 or len(current) == 0:
        return []
    # Imported here: the CLI and the deploy config read this module's defaults without paying for scipy.
    from scipy.optimize import linear_sum_assignment

    iou = iou_matrix(previous, current)
    rows, cols = linear_sum_assignment(1.0 - iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= iou_threshold and iou[r, c] > 0]


def smoothing_alpha(window: int) -> float:
    """EMA weight of the newest frame for a ``window``-frame smoothing window (1: no smoothing)."""
    if window < 1:
        raise ValueError(f"smoothing window {window} is not at least 1 frame")
    return 2.0 / (window + 1)


@dataclass(slots=True)
class Track:
    id: int
    box: np.ndarray  # float64 (4,) xywh, the last matched box
    smoothed: np.ndarray  # float64 (classes,)
    last_seq: int


class CameraTracks:
    """The tracks of one camera; see the module docstring for the policy."""

    def __init__(
        self, window: int = DEFAULT_WINDOW, iou_threshold: float = DEFAULT_IOU, max_age: int = DEFAULT_MAX_AGE
    ) -> None:
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"IoU threshold {iou_threshold} is not in (0, 1]")
        if max_age < 0:
            raise ValueError(f"max_age {max_age} is negative")
        self.window = window
        self.alpha = smoothing_alpha(window)
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.tracks: list[Track] = []
        self.next_id = 1
        self.newest: tuple[int, float] | None = None  # (seq, ts_capture) of the newest frame seen

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _step(self, state: np.ndarray, raw: np.ndarray, gap: int) -> np.ndarray:
        a = 1.0 - (1.0 - self.alpha) ** max(1, gap)
        return state + a * (raw - state)

    def update(
        self, seq: int, boxes: np.ndarray, probs: np.ndarray, ts_capture: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track ids (N,) int64 and smoothed probabilities (N, classes) float32 for one frame's faces."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        n = len(boxes)
        probs = np.asarray(probs, dtype=np.float64)
        probs = probs.reshape(n, -1) if n else probs.reshape(0, probs.shape[-1] if probs.ndim == 2 else 0)
        ids = np.zeros(n, dtype=np.int64)
        smoothed = probs.copy()
        if self.newest is not None and seq <= self.newest[0]:
            restarted = seq < self.newest[0] and ts_capture is not None and ts_capture > self.newest[1]
            if not restarted:
                return self._late(boxes, probs, ids, smoothed)
            self.tracks = []
        self.newest = (seq, ts_capture if ts_capture is not None else float("-inf"))
        self.tracks = [t for t in self.tracks if seq - t.last_seq - 1 <= self.max_age]  # frames missed
        pairs = match(np.array([t.box for t in self.tracks]), boxes, self.iou_threshold)
        matched = set()
        for ti, fi in pairs:
            track = self.tracks[ti]
            track.smoothed = self._step(track.smoothed, probs[fi], seq - track.last_seq)
            track.box, track.last_seq = boxes[fi].copy(), seq
            ids[fi], smoothed[fi] = track.id, track.smoothed
            matched.add(fi)
        for fi in range(n):
            if fi not in matched:
                track = Track(self._new_id(), boxes[fi].copy(), probs[fi].copy(), seq)
                self.tracks.append(track)
                ids[fi] = track.id
        return ids, smoothed.astype(np.float32)

    def _late(
        self, boxes: np.ndarray, probs: np.ndarray, ids: np.ndarray, smoothed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        pairs = match(np.array([t.box for t in self.tracks]), boxes, self.iou_threshold)
        matched = set()
        for ti, fi in pairs:
            track = self.tracks[ti]
            ids[fi], smoothed[fi] = track.id, self._step(track.smoothed, probs[fi], 1)
            matched.add(fi)
        for fi in range(len(boxes)):
            if fi not in matched:
                ids[fi] = self._new_id()
        return ids, smoothed.astype(np.float32)


class Tracker:
    """:class:`CameraTracks` for every camera, created on a camera's first frame."""

    def __init__(
        self, window: int = DEFAULT_WINDOW, iou_threshold: float = DEFAULT_IOU, max_age: int = DEFAULT_MAX_AGE
    ) -> None:
        CameraTracks(window, iou_threshold, max_age)  # validate the settings now, not on the first frame
        self.window = window
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.cameras: dict[str, CameraTracks] = {}

    def update(
        self, camera: str, seq: int, boxes: np.ndarray, probs: np.ndarray, ts_capture: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        tracks = self.cameras.get(camera)
        if tracks is None:
            tracks = self.cameras[camera] = CameraTracks(self.window, self.iou_threshold, self.max_age)
        return tracks.update(seq, boxes, probs, ts_capture)
