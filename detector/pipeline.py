"""One frame in, one Faces message out: optional downscaled detection, boxes back in full-res pixels,
classifier crops from the full-resolution frame."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from detector.backends import FaceDetector, build_detector
from detector.crops import face_crops
from emostream.boxes import clip_boxes, scale_boxes
from emostream.metrics import DETECTIONS
from emostream.wire import Faces, Frame


def downscale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized by ``factor`` (0 < factor <= 1) with INTER_AREA; the same array for 1."""
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor {factor} is not in (0, 1]")
    if factor == 1:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def detect_downscaled(detector: FaceDetector, image_bgr: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Detect on ``image_bgr`` shrunk by ``factor`` and return boxes in full-resolution pixels.

    Detection cost grows with the pixel count, the classifier needs only 48x48 crops, and faces
    from a camera across a room are still 40+ px at half resolution: 0.5 is a good trade.
    """
    small = downscale_image(image_bgr, factor)
    boxes, scores = detector.detect(small)
    if small is not image_bgr and len(boxes):
        boxes = scale_boxes(boxes, small.shape, image_bgr.shape)
    return boxes, scores


class FaceExtractor:
    """Detector plus crops: turns a wire Frame into a wire Faces (possibly with zero faces).

    Key frames (``frame.key``, the default) run the detector. A non-key frame (detection interval > 1,
    see :mod:`capture.dispatch`) reuses the boxes of its camera's last key frame and only takes new
    crops: at 25 fps faces move a few pixels between frames, and the crops still come from the new
    frame, so the emotion follows the face. ``python -m deploy bench`` measures how many of the
    detector's faces the held boxes keep. A non-key frame of a camera this extractor has not seen a
    key frame of (e.g. after a restart) is detected anyway.
    """

    def __init__(self, detector: FaceDetector, downscale: float = 1.0, crop_size: int = 48) -> None:
        if not 0 < downscale <= 1:
            raise ValueError(f"downscale {downscale} is not in (0, 1]")
        self.detector = detector
        self.downscale = downscale
        self.crop_size = crop_size
        self._key_boxes: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # camera -> last key frame's result

    def process(self, frame: Frame) -> Faces:
        image = frame.image
        held = None if frame.key else self._key_boxes.get(frame.camera)
        if held is None:
            boxes, scores = detect_downscaled(self.detector, image, self.downscale)
            self._key_boxes[frame.camera] = (boxes, scores)
            DETECTIONS.labels(camera=frame.camera).inc()
        else:
            boxes, scores = held
        # Crops come from the full-resolution frame: downscaling is only for finding faces.
        crops = face_crops(image, boxes, self.crop_size)
        return Faces(
            camera=frame.camera,
            seq=frame.seq,
            ts_capture=frame.ts_capture,
            ts_detect=time.time(),
            frame_shape=(int(image.shape[0]), int(image.shape[1])),
            boxes=clip_boxes(boxes, image.shape),
            scores=np.asarray(scores, dtype=np.float32).reshape(-1),
            crops=crops,
            droppable=frame.droppable,
        )


def build_extractor(
    backend: str = "haar",
    model_path: str | None = None,
    score_threshold: float = 0.7,
    min_face: int = 40,
    downscale: float = 1.0,
    crop_size: int = 48,
) -> FaceExtractor:
    """A :class:`FaceExtractor` from CLI-level settings; ``min_face`` is in full-resolution pixels."""
    if not 0 < downscale <= 1:
        raise ValueError(f"downscale {downscale} is not in (0, 1]")
    # The detector sees the downscaled image, so its minimum face size is scaled along.
    min_size = max(1, math.floor(min_face * downscale))
    detector = build_detector(backend, model_path, score_threshold, min_size)
    return FaceExtractor(detector, downscale=downscale, crop_size=crop_size)
