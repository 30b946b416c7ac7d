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

Scores reused along a track (``classify_every`` N > 1): a face that continues a track whose face was
classified fewer than N frames earlier takes that classification's scores instead of a model call
(:meth:`Tracker.plan`, before the batch goes through the model). Faces of new tracks, and of tracks whose
last classification is N or more frames old, are classified. The plan matches each frame's boxes against
the tracks as they stood before the batch, and a face may also take the scores of an earlier face of its
track in the same batch; so every track is classified at least every N frames of its camera, and with N
= 2 about half the faces of steady tracks cost a model call. Frames from the past (see above) are always
classified.

Under load (``classify_every_max``, :class:`ReuseGovernor`): N is not fixed. Each batch reports how late
it is, the capture-to-now age of its oldest live face (files' frames are never late). While batches are
later than ``load_latency_ms``, N grows by one frame, at most once per ``load_latency_ms`` so that each
step has time to show, up to ``classify_every_max``; after ``CALM_S`` of batches all under half that
age it steps back by one, down to ``classify_every``. A machine short of CPU then spends less of it
on steady faces instead of queueing every event or dropping frames as stale; new faces are still
classified at once. The lateness counts every stage before the classifier: on shared cores whatever
the classifier saves goes to them too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from classifier.settings import ClassifierSettings
from emostream.boxes import iou_matrix
from emostream.wire import Faces

#: The classifier settings' defaults (classifier/settings.py), for trackers built without settings.
DEFAULT_WINDOW: int = ClassifierSettings.model_fields["smoothing_window"].default
DEFAULT_IOU: float = ClassifierSettings.model_fields["track_iou"].default
DEFAULT_MAX_AGE: int = ClassifierSettings.model_fields["track_max_age"].default
DEFAULT_CLASSIFY_EVERY: int = ClassifierSettings.model_fields["classify_every"].default
#: Seconds of batches all on time (oldest live face younger than half of load_latency_ms) before the
#: reuse interval steps back by one frame: slower down than up, so that a load that comes and goes
#: does not make it swing.
CALM_S = 1.0
#: ``Track.raw_seq`` of a track whose scores must not be reused: its next face is classified.
UNCLASSIFIED = -(2**62)


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
    #: The raw scores of the track's last classified face and that frame's seq (see ``classify_every``).
    raw: np.ndarray
    raw_seq: int


@dataclass
class ScorePlan:
    """Which faces of a batch go through the model and where the others take their scores from.

    ``classify`` (faces,) bool marks the faces the model scores, in batch order. A face not classified
    takes either ``stored[i]``, the raw scores of its track's classification in an earlier batch, or
    ``same_batch[i]``, the batch index of an earlier face of its track that is classified.
    """

    classify: np.ndarray
    stored: dict[int, np.ndarray] = field(default_factory=dict)
    same_batch: dict[int, int] = field(default_factory=dict)

    @property
    def reused(self) -> int:
        return len(self.classify) - int(self.classify.sum())

    def fill(self, model_probs: np.ndarray) -> np.ndarray:
        """Scores (faces, classes) for every face from the model's rows for the classified faces."""
        model_probs = np.asarray(model_probs)
        probs = np.empty((len(self.classify), model_probs.shape[-1]), dtype=model_probs.dtype)
        probs[self.classify] = model_probs
        for i, scores in self.stored.items():
            probs[i] = scores
        for i, source in self.same_batch.items():
            probs[i] = probs[source]
        return probs


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

    def plan_frame(
        self, seq: int, boxes: np.ndarray, every: int, planned: dict[int, tuple[int, int]]
    ) -> list[tuple[int | None, np.ndarray | int | None]]:
        """For each face of a frame: (the id of the track it continues or None, where its scores come
        from: the track's stored raw scores, the batch index of an earlier face of the track classified
        in this batch, or None to classify it). ``planned`` maps track id -> (seq, batch index) of the
        track's classifications planned so far in this batch. The tracks are not changed."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        plan: list[tuple[int | None, np.ndarray | int | None]] = [(None, None)] * len(boxes)
        if every <= 1 or (self.newest is not None and seq <= self.newest[0]):
            return plan
        for ti, fi in match(np.array([t.box for t in self.tracks]), boxes, self.iou_threshold):
            track = self.tracks[ti]
            source: np.ndarray | int | None = None
            if track.id in planned:
                planned_seq, index = planned[track.id]
                source = index if 0 < seq - planned_seq < every else None
            elif 0 < seq - track.raw_seq < every:
                source = track.raw
            plan[fi] = (track.id, source)
        return plan

    def update(
        self,
        seq: int,
        boxes: np.ndarray,
        probs: np.ndarray,
        ts_capture: float | None = None,
        classified: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track ids (N,) int64 and smoothed probabilities (N, classes) float32 for one frame's faces.

        ``classified`` (N,) bool: which faces the model scored on this frame (default all); the others'
        ``probs`` are reused scores, which do not renew their track's classification."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        n = len(boxes)
        fresh = np.ones(n, dtype=bool) if classified is None else np.asarray(classified, dtype=bool)
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
            if fresh[fi]:
                track.raw, track.raw_seq = probs[fi].copy(), seq
            ids[fi], smoothed[fi] = track.id, track.smoothed
            matched.add(fi)
        for fi in range(n):
            if fi not in matched:
                # A reused face that starts a track after all (the tracks moved within its batch): its
                # scores are not this frame's, so the track's next face is classified.
                raw_seq = seq if fresh[fi] else UNCLASSIFIED
                track = Track(self._new_id(), boxes[fi].copy(), probs[fi].copy(), seq, probs[fi].copy(), raw_seq)
                self.tracks.append(track)
                ids[fi] = track.id
        return ids, smoothed.astype(np.float32)

    def forget_scores(self) -> None:
        """Classify every track's next face (a new model serves: no scores of the old one are reused)."""
        for track in self.tracks:
            track.raw_seq = UNCLASSIFIED

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
        self,
        window: int = DEFAULT_WINDOW,
        iou_threshold: float = DEFAULT_IOU,
        max_age: int = DEFAULT_MAX_AGE,
        classify_every: int = DEFAULT_CLASSIFY_EVERY,
    ) -> None:
        CameraTracks(window, iou_threshold, max_age)  # validate the settings now, not on the first frame
        if classify_every < 1:
            raise ValueError(f"classify_every {classify_every} is not at least 1 frame")
        self.window = window
        self.iou_threshold = iou_threshold
        self.max_age = max_age
        self.classify_every = classify_every
        self.cameras: dict[str, CameraTracks] = {}

    def _camera(self, camera: str) -> CameraTracks:
        tracks = self.cameras.get(camera)
        if tracks is None:
            tracks = self.cameras[camera] = CameraTracks(self.window, self.iou_threshold, self.max_age)
        return tracks

    def plan(self, frames: Sequence[Faces], every: int | None = None) -> ScorePlan:
        """Which faces of a batch (``frames`` in batch order) the model must score; see the module docstring.
        ``every``: the reuse interval for this batch (:class:`ReuseGovernor`), default ``classify_every``."""
        every = self.classify_every if every is None else every
        result = ScorePlan(np.ones(sum(len(f) for f in frames), dtype=bool))
        if every <= 1:
            return result
        planned: dict[str, dict[int, tuple[int, int]]] = {}
        start = 0
        for frame in frames:
            tracks = self.cameras.get(frame.camera)
            if tracks is not None:
                camera_planned = planned.setdefault(frame.camera, {})
                decisions = tracks.plan_frame(frame.seq, frame.boxes, every, camera_planned)
                for i, (track_id, source) in enumerate(decisions, start):
                    if isinstance(source, int):
                        result.same_batch[i] = source
                    elif source is not None:
                        result.stored[i] = source
                    elif track_id is not None:  # classified here: later frames of the batch may reuse it
                        camera_planned[track_id] = (frame.seq, i)
                    result.classify[i] = source is None
            start += len(frame)
        return result

    def update(
        self,
        camera: str,
        seq: int,
        boxes: np.ndarray,
        probs: np.ndarray,
        ts_capture: float | None = None,
        classified: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._camera(camera).update(seq, boxes, probs, ts_capture, classified)

    def forget_scores(self) -> None:
        """Classify every track's next face: a new model serves."""
        for tracks in self.cameras.values():
            tracks.forget_scores()


class ReuseGovernor:
    """The reuse interval (``classify_every``) for the next batch, from how late batches are; see the
    module docstring ("Under load"). Plain logic with an injectable clock."""

    def __init__(self, base: int, most: int, late_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if base < 1:
            raise ValueError(f"classify_every {base} is not at least 1 frame")
        if late_s <= 0:
            raise ValueError(f"load latency {late_s} s is not positive")
        self.base = base
        self.most = max(base, most)
        self.late_s = late_s
        self.clock = clock
        self.every = base
        self._raised_at = -math.inf
        self._calm_since: float | None = None

    def observe(self, lateness_s: float | None) -> int:
        """Take one batch's lateness (None: it holds no live camera's face) and return the interval."""
        if lateness_s is None:
            return self.every
        now = self.clock()
        if lateness_s > self.late_s:
            self._calm_since = None
            if self.every < self.most and now - self._raised_at >= self.late_s:
                self.every += 1
                self._raised_at = now
        elif lateness_s < self.late_s / 2:
            if self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= CALM_S and self.every > self.base:
                self.every -= 1
                self._calm_since = now
        else:
            self._calm_since = None
        return self.every


def batch_lateness(frames: Sequence[Faces], now: float) -> float | None:
    """Capture-to-``now`` age (s) of the oldest live camera's frame among ``frames``; None if there is none."""
    live = [frame.ts_capture for frame in frames if frame.droppable]
    return now - min(live) if live else None
