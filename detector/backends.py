"""Face detectors behind one small protocol: ``detect(image_bgr) -> (boxes, scores)``.

Boxes are int32 (N, 4) as x, y, w, h in the pixels of the image passed in; scores float32 (N,).
Measured on lena/messi5/grace_hopper and faces.mp4: a YuNet box is about as tall as the Haar box
of the same face but ~20% narrower (it spans brow to chin, not ear to ear), so the square of side
max(w, h) around either box covers nearly the same region (see :mod:`detector.crops`).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from detector.settings import DetectorSettings

#: Keyword defaults below come from the detector settings (detector/settings.py), their one copy.
_DEFAULTS = DetectorSettings()

HAAR_CASCADE = "haarcascade_frontalface_default.xml"


class DetectorConfigError(ValueError):
    """A detector that cannot be built from its settings (missing model file, bad parameter)."""


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in a BGR uint8 image."""

    #: Ignore faces smaller than this many pixels (larger box side), in the detected image's pixels.
    min_size: int

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def _empty() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), dtype=np.int32), np.zeros((0,), dtype=np.float32)


class HaarDetector:
    """OpenCV's Viola-Jones frontal face cascade: no model file, CPU-cheap, frontal faces only.

    Haar gives no calibrated confidence, so every box that survives ``min_neighbors`` gets score 1.0.
    Its sliding window is 24x24 px, so faces under ~24 px in the detected image are never found.
    """

    def __init__(
        self,
        scale_factor: float = 1.2,
        min_neighbors: int = 5,
        min_size: int = 24,
        cascade_path: str | None = None,
    ) -> None:
        if scale_factor <= 1.0:
            raise DetectorConfigError("Haar scale_factor must be > 1 (1.1-1.3 is usual)")
        path = cascade_path or os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise DetectorConfigError(f"cannot load Haar cascade {path!r}")
        # 1.2 rather than the classic 1.1: ~2x faster, and it still found every face in the test media.
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        side = max(int(self.min_size), 1)
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        if len(boxes) == 0:
            return _empty()
        boxes = np.asarray(boxes, dtype=np.int32).reshape(-1, 4)
        return boxes, np.ones(len(boxes), dtype=np.float32)


class YuNetDetector:
    """OpenCV's YuNet CNN (``cv2.FaceDetectorYN``, an OpenCV Zoo .onnx): finds faces turned and tilted
    further than Haar does, and returns real confidence scores in [0, 1]."""

    def __init__(
        self,
        model_path: str,
        score_threshold: float = _DEFAULTS.score_threshold,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        min_size: int = 0,
    ) -> None:
        if not model_path or not os.path.isfile(model_path):
            raise DetectorConfigError(f"YuNet model file {model_path!r} does not exist")
        if not 0 < score_threshold < 1:
            raise DetectorConfigError(f"score_threshold {score_threshold} is not in (0, 1)")
        try:
            # The input size is a placeholder: detect() sets the real one for each frame size.
            self.net = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise DetectorConfigError(f"cannot load YuNet model {model_path!r}: {exc}") from exc
        self.model_path = model_path
        self.score_threshold = score_threshold
        self.min_size = min_size
        self._input_size: tuple[int, int] | None = None

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image_bgr.shape[:2]
        if self._input_size != (width, height):
            # YuNet's anchors depend on the input size; setting it per new frame size keeps every
            # camera's resolution valid through one detector instance.
            self.net.setInputSize((width, height))
            self._input_size = (width, height)
        _, faces = self.net.detect(image_bgr)
        if faces is None or len(faces) == 0:
            return _empty()
        # Rows: x, y, w, h, 5 landmarks (x, y), score.
        boxes = np.round(faces[:, :4]).astype(np.int32)
        scores = faces[:, -1].astype(np.float32)
        if self.min_size > 0:
            keep = np.maximum(boxes[:, 2], boxes[:, 3]) >= self.min_size
            boxes, scores = boxes[keep], scores[keep]
        return boxes.reshape(-1, 4), scores.reshape(-1)


def build_detector(
    backend: str,
    model_path: str | None = None,
    score_threshold: float = _DEFAULTS.score_threshold,
    min_size: int = 24,
) -> FaceDetector:
    """A detector by name ("haar" or "yunet"); ``min_size`` in the pixels of the images it will see."""
    if backend == "haar":
        return HaarDetector(min_size=min_size)
    if backend == "yunet":
        if not model_path:
            raise DetectorConfigError("the yunet backend needs --model, the path of a YuNet .onnx file")
        return YuNetDetector(model_path, score_threshold=score_threshold, min_size=min_size)
    raise DetectorConfigError(f"unknown detector backend {backend!r} (haar, yunet)")
