"""``Detections``: the faces a detector found in one image, as one value that checks itself.

In the spirit of supervision's ``Detections``: every detector returns one, and the small tools
(scale to another image size, keep a subset) return new ones, so boxes, scores and landmarks can
never drift out of step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emostream.boxes import as_boxes, scale_boxes


@dataclass(frozen=True)
class Detections:
    #: int32 (N, 4): x, y, w, h in the pixels of the image the detector saw.
    boxes: np.ndarray
    #: float32 (N,): confidence in [0, 1] (Haar, which has none, gives 1).
    scores: np.ndarray
    #: float32 (N, 5, 2) or None: right eye, left eye, nose tip, right and left mouth corner, (x, y)
    #: in the same pixels (see :data:`detector.align.LANDMARKS`); None for detectors without them.
    landmarks: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = as_boxes(self.boxes, np.int32)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        landmarks = self.landmarks
        if landmarks is not None:
            landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)
            if len(landmarks) != len(boxes):
                raise ValueError(f"{len(boxes)} boxes but {len(landmarks)} landmark sets")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "landmarks", landmarks)

    @classmethod
    def empty(cls, with_landmarks: bool = False) -> Detections:
        return cls(
            np.zeros((0, 4), np.int32),
            np.zeros(0, np.float32),
            np.zeros((0, 5, 2), np.float32) if with_landmarks else None,
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        """The detections selected by a boolean mask, an index array or a slice."""
        landmarks = None if self.landmarks is None else self.landmarks[index]
        return Detections(self.boxes[index], self.scores[index], landmarks)

    def scaled(self, from_shape: tuple[int, ...], to_shape: tuple[int, ...]) -> Detections:
        """The same faces in the pixels of an image of ``to_shape`` instead of ``from_shape`` ((h, w, ...))."""
        landmarks = None
        if self.landmarks is not None:
            factor = np.array([to_shape[1] / from_shape[1], to_shape[0] / from_shape[0]], dtype=np.float32)
            landmarks = self.landmarks * factor
        return Detections(scale_boxes(self.boxes, from_shape, to_shape), self.scores, landmarks)

    def at_least(self, min_size: int) -> Detections:
        """Only the faces whose larger box side is at least ``min_size`` pixels."""
        if min_size <= 0 or not len(self):
            return self
        return self[np.maximum(self.boxes[:, 2], self.boxes[:, 3]) >= min_size]
