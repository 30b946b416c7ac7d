"""One frame in, one Faces message out: optional downscaled detection, boxes back in full-res pixels,
classifier crops from the full-resolution frame."""

from __future__ import annotations

import math
import time

import cv2
import numpy as np

from detector.align import aligned_crops, refine_landmarks
from detector.backends import FaceDetector, RolledPasses, build_detector
from detector.crops import face_crops
from detector.detections import Detections
from detector.settings import DetectorSettings
from emostream.boxes import clip_boxes
from emostream.metrics import DETECTIONS
from emostream.wire import Faces, Frame

#: Keyword defaults below come from the detector settings (detector/settings.py), their one copy.
_DEFAULTS = DetectorSettings()


def downscale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized by ``factor`` (0 < factor <= 1) with INTER_AREA; the same array for 1."""
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor {factor} is not in (0, 1]")
    if factor == 1:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def detect_downscaled(detector: FaceDetector, image_bgr: np.ndarray, factor: float) -> Detections:
    """Detect on ``image_bgr`` shrunk by ``factor`` and return boxes in full-resolution pixels.

    Detection cost grows with the pixel count, the classifier needs only 48x48 crops, and faces
    from a camera across a room are still 40+ px at half resolution: 0.5 is a good trade.
    """
    small = downscale_image(image_bgr, factor)
    found = detector.detect(small)
    if small is not image_bgr and len(found):
        found = found.scaled(small.shape, image_bgr.shape)
    return found


class FaceExtractor:
    """Detector plus crops: turns a wire Frame into a wire Faces (possibly with zero faces).

    Key frames (``frame.key``, the default) run the detector. A non-key frame (detection interval > 1,
    see :mod:`capture.dispatch`) reuses the boxes of its camera's last key frame and only takes new
    crops: at 25 fps faces move a few pixels between frames, and the crops still come from the new
    frame, so the emotion follows the face. ``python -m deploy bench`` measures how many of the
    detector's faces the held boxes keep. A non-key frame of a camera this extractor has not seen a
    key frame of (e.g. after a restart) is detected anyway.
    """

    def __init__(
        self,
        detector: FaceDetector,
        downscale: float = _DEFAULTS.downscale,
        crop_size: int = _DEFAULTS.crop_size,
        align: bool = False,
    ) -> None:
        if not 0 < downscale <= 1:
            raise ValueError(f"downscale {downscale} is not in (0, 1]")
        self.detector = detector
        self.downscale = downscale
        self.crop_size = crop_size
        #: Upright crops framed like FER2013 from the detector's landmarks (detector.align); faces
        #: without landmarks (Haar) get the box's square crop.
        self.align = align
        # A tilted face's landmarks are read again on an upright patch: one plain pass is enough there.
        self._refiner = detector.inner if isinstance(detector, RolledPasses) else detector
        self._key_faces: dict[str, Detections] = {}  # camera -> last key frame's detections

    def extract(self, image: np.ndarray, camera: str = "", key: bool = True) -> tuple[Detections, np.ndarray]:
        """The faces of one full-resolution frame and their classifier crops (N, size, size) uint8."""
        held = None if key else self._key_faces.get(camera)
        if held is None:
            found = detect_downscaled(self.detector, image, self.downscale)
            if self.align:
                found = refine_landmarks(image, found, self._refiner)
            self._key_faces[camera] = found
            DETECTIONS.labels(camera=camera).inc()
        else:
            found = held
        # Crops come from the full-resolution frame: downscaling is only for finding faces.
        if self.align and found.landmarks is not None:
            crops = aligned_crops(image, found.landmarks, self.crop_size)
        else:
            crops = face_crops(image, found.boxes, self.crop_size)
        return found, crops

    def process(self, frame: Frame) -> Faces:
        image = frame.image
        found, crops = self.extract(image, frame.camera, frame.key)
        return Faces(
            camera=frame.camera,
            seq=frame.seq,
            ts_capture=frame.ts_capture,
            ts_detect=time.time(),
            frame_shape=(int(image.shape[0]), int(image.shape[1])),
            boxes=clip_boxes(found.boxes, image.shape),
            scores=found.scores,
            crops=crops,
            droppable=frame.droppable,
        )


def build_extractor(settings: DetectorSettings | None = None) -> FaceExtractor:
    """A :class:`FaceExtractor` from a detector's settings (defaults: ``DetectorSettings()``);
    ``min_face`` is in full-resolution pixels."""
    settings = settings or DetectorSettings()
    # The detector sees the downscaled image, so its minimum face size is scaled along.
    min_size = max(1, math.floor(settings.min_face * settings.downscale))
    detector = build_detector(
        settings.backend, settings.model, settings.score_threshold, min_size, settings.roll_passes
    )
    return FaceExtractor(detector, downscale=settings.downscale, crop_size=settings.crop_size, align=settings.align)
