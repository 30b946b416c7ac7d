"""One frame in, one Faces message out: optional downscaled detection, boxes back in full-res pixels,
classifier crops from the full-resolution frame."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import cv2
import numpy as np

from detector.align import (
    REFINE_MISFIT_SLACK,
    aligned_crops,
    detect_upright_patch,
    frontal_faces,
    refine_landmarks,
    roll_degrees,
)
from detector.backends import FaceDetector, RolledPasses, build_detector, merge_detections
from detector.crops import face_crops
from detector.detections import Detections
from detector.settings import DetectorSettings
from emostream.boxes import clip_boxes, iou_matrix
from emostream.metrics import DETECTIONS, FACES_REJECTED
from emostream.wire import Faces, Frame

#: Keyword defaults below come from the detector settings (detector/settings.py), their one copy.
_DEFAULTS = DetectorSettings()
#: ``emostream_faces_rejected_total``'s reason for faces under ``confident_score`` without frontal landmarks.
NOT_FRONTAL = "not_frontal"


def downscale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """``image`` resized by ``factor`` (0 < factor <= 1) with INTER_AREA; the same array for 1."""
    if not 0 < factor <= 1:
        raise ValueError(f"downscale factor {factor} is not in (0, 1]")
    if factor == 1:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def detect_downscaled(detect: Callable[[np.ndarray], Detections], image_bgr: np.ndarray, factor: float) -> Detections:
    """``detect`` (a detector's ``detect``) on ``image_bgr`` shrunk by ``factor``: boxes in full-resolution pixels.

    Detection cost grows with the pixel count, the classifier needs only 48x48 crops, and faces
    from a camera across a room are still 40+ px at half resolution: 0.5 is a good trade.
    """
    small = downscale_image(image_bgr, factor)
    found = detect(small)
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

    Rolled passes (a :class:`RolledPasses` detector): a camera's first key frame runs every one; after
    it, each turned pass runs on one key frame in ``roll_every`` of the camera, the passes spread over
    those ``roll_every`` key frames (:meth:`turned_angles`) so that no key frame pays for all of them at
    once. On every key frame each face of the camera's previous key frame that was not found again (a
    rolled head, which the upright pass misses) is looked for on an upright patch around its last box
    (:func:`detect_upright_patch`): a face found rolled stays found at the cost of a small patch, not
    of whole turned frames.

    Of YuNet's faces scoring under ``confident_score``, only those whose landmarks fit a frontal face
    are reported (:func:`detector.align.frontal_faces`); the others are counted as rejected. With
    alignment, one whose first landmarks already misfit beyond the limit plus
    :data:`detector.align.REFINE_MISFIT_SLACK` is rejected before its landmarks are refined on a patch.
    """

    def __init__(
        self,
        detector: FaceDetector,
        downscale: float = _DEFAULTS.downscale,
        crop_size: int = _DEFAULTS.crop_size,
        align: bool = False,
        roll_every: int = 1,
        confident_score: float = _DEFAULTS.confident_score,
        max_landmark_misfit: float = _DEFAULTS.max_landmark_misfit,
    ) -> None:
        if not 0 < downscale <= 1:
            raise ValueError(f"downscale {downscale} is not in (0, 1]")
        if roll_every < 1:
            raise ValueError(f"roll_every {roll_every} is not at least 1")
        self.detector = detector
        self.downscale = downscale
        self.crop_size = crop_size
        #: Upright crops framed like FER2013 from the detector's landmarks (detector.align); faces
        #: without landmarks (Haar) get the box's square crop.
        self.align = align
        self.roll_every = roll_every
        #: Faces under ``confident_score`` are reported only if their landmarks fit a frontal face
        #: (detector.align.frontal_faces): below it YuNet's boxes are mostly profiles and backs of heads.
        self.confident_score = confident_score
        self.max_landmark_misfit = max_landmark_misfit
        self._rolled = detector if isinstance(detector, RolledPasses) else None
        # Tilted faces' landmarks and followed faces are read on upright patches: one plain pass is enough there.
        self._upright = detector.inner if isinstance(detector, RolledPasses) else detector
        self._key_faces: dict[str, Detections] = {}  # camera -> last key frame's detections
        self._key_frames: dict[str, int] = {}  # camera -> key frames detected

    def key_faces(self, camera: str) -> Detections | None:
        """The faces of ``camera``'s last key frame (full-resolution pixels), or None before its first."""
        return self._key_faces.get(camera)

    def forget(self, camera: str) -> None:
        """Drop what this extractor holds of ``camera`` (its last faces, its rolled-pass schedule)."""
        self._key_faces.pop(camera, None)
        self._key_frames.pop(camera, None)

    def detect(self, image: np.ndarray, camera: str = "") -> Detections:
        """Run the detector on one key frame of ``camera``: faces in full-resolution pixels."""
        count = self._key_frames.get(camera, 0)
        self._key_frames[camera] = count + 1
        if not count:
            # The series exists at zero from the camera's first key frame, so rate() and dashboards see it.
            FACES_REJECTED.labels(camera=camera, reason=NOT_FRONTAL)
        if self._rolled is None:
            found = detect_downscaled(self.detector.detect, image, self.downscale)
        else:
            angles = self.turned_angles(count)
            found = detect_downscaled(partial(self._rolled.detect, angles=angles), image, self.downscale)
        rejected = 0
        if self.align:
            # The refinement's patch only for faces the landmark check below may still keep.
            hopeful = frontal_faces(found, self.confident_score, self.max_landmark_misfit + REFINE_MISFIT_SLACK)
            rejected += len(found) - len(hopeful)
            found = refine_landmarks(image, hopeful, self._upright)
        previous = self._key_faces.get(camera)
        if self._rolled is not None and count and previous is not None:
            found = self._follow(image, found, previous, self._rolled.iou)
        frontal = frontal_faces(found, self.confident_score, self.max_landmark_misfit)
        rejected += len(found) - len(frontal)
        if rejected:
            FACES_REJECTED.labels(camera=camera, reason=NOT_FRONTAL).inc(rejected)
        return frontal

    def turned_angles(self, count: int) -> tuple[float, ...]:
        """The turned passes of a camera's key frame number ``count`` (0: its first, which runs all).

        Pass ``j`` of ``n`` runs when ``count % roll_every == j * roll_every // n``: with the default
        two passes and ``roll_every`` 8, +30 on key frames 8, 16, ... and -30 on 4, 12, ..., so a key frame
        costs at most one turned pass more than an upright one, not two (docs/video.md).
        """
        if self._rolled is None:
            return ()
        angles = self._rolled.angles
        if count == 0:
            return angles
        phase = count % self.roll_every
        return tuple(a for j, a in enumerate(angles) if j * self.roll_every // len(angles) == phase)

    def _follow(self, image: np.ndarray, found: Detections, previous: Detections, iou: float) -> Detections:
        """``found`` plus each face of ``previous`` it lacks (no box overlapping by ``iou``) that an
        upright patch around its last box, turned by its last roll, shows again."""
        if not len(previous):
            return found
        rolls = roll_degrees(previous.landmarks) if previous.landmarks is not None else np.zeros(len(previous))
        overlaps = iou_matrix(previous.boxes, found.boxes) if len(found) else np.zeros((len(previous), 0))
        again = []
        for i in range(len(previous)):
            if overlaps.shape[1] and overlaps[i].max() >= iou:
                continue
            face = detect_upright_patch(image, previous.boxes[i], float(rolls[i]), self._upright)
            if face is not None:
                again.append(face)
        return merge_detections([found, *again], iou) if again else found

    def extract(self, image: np.ndarray, camera: str = "", key: bool = True) -> tuple[Detections, np.ndarray]:
        """The faces of one full-resolution frame and their classifier crops (N, size, size) uint8."""
        held = None if key else self._key_faces.get(camera)
        if held is None:
            found = self.detect(image, camera)
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
        settings.backend,
        settings.model,
        settings.score_threshold,
        min_size,
        settings.roll_passes,
        runtime=settings.runtime,
        threads=settings.threads,
    )
    return FaceExtractor(
        detector,
        downscale=settings.downscale,
        crop_size=settings.crop_size,
        align=settings.align,
        roll_every=settings.roll_every,
        confident_score=settings.confident_score,
        max_landmark_misfit=settings.max_landmark_misfit,
    )
