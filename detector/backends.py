"""Face detectors behind one small protocol: ``detect(image_bgr) -> Detections``.

Boxes are int32 (N, 4) as x, y, w, h in the pixels of the image passed in, scores float32 (N,),
and YuNet's five landmarks (N, 5, 2) where the detector gives them (see :mod:`detector.detections`).
Measured on lena/messi5/grace_hopper and faces.mp4: a YuNet box is about as tall as the Haar box
of the same face but narrower (it spans brow to chin, not ear to ear), so the square of side
max(w, h) around either box covers nearly the same region (see :mod:`detector.crops`).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import cv2
import cv2.data  # the Haar cascades' folder; cv2's stubs do not list the submodule
import numpy as np

from detector.detections import Detections
from detector.settings import DetectorSettings, YuNetRuntime
from detector.yunet import OnnxYuNet

#: Keyword defaults below come from the detector settings (detector/settings.py), their one copy.
_DEFAULTS = DetectorSettings()

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
#: The YuNet model shipped with the package (OpenCV Zoo, MIT licence: see detector/models/README.md).
YUNET_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "face_detection_yunet_2026may.onnx")


class DetectorConfigError(ValueError):
    """A detector that cannot be built from its settings (missing model file, bad parameter)."""


@runtime_checkable
class FaceDetector(Protocol):
    """Finds faces in a BGR uint8 image."""

    #: Ignore faces smaller than this many pixels (larger box side), in the detected image's pixels.
    min_size: int

    def detect(self, image_bgr: np.ndarray) -> Detections: ...


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
        # 1.2 rather than the classic 1.1: faster, and it still found every face in the test media
        # (docs/benchmarks.md, "Measurements behind defaults and constants").
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, image_bgr: np.ndarray) -> Detections:
        gray = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        side = max(int(self.min_size), 1)
        boxes = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        if len(boxes) == 0:
            return Detections.empty()
        return Detections(np.asarray(boxes, dtype=np.int32), np.ones(len(boxes), dtype=np.float32))


class YuNetDetector:
    """OpenCV's YuNet CNN (an OpenCV Zoo .onnx): finds faces turned and tilted further than Haar does,
    and returns real confidence scores in [0, 1].

    ``runtime``: ``onnxruntime`` runs the network on ONNX Runtime with ``threads`` threads (0: its
    default) and decodes it as OpenCV does (:mod:`detector.yunet`); ``opencv`` runs
    ``cv2.FaceDetectorYN`` (OpenCV's thread count). Both give the same faces.
    """

    def __init__(
        self,
        model_path: str,
        score_threshold: float = _DEFAULTS.score_threshold,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        min_size: int = 0,
        runtime: YuNetRuntime = _DEFAULTS.runtime,
        threads: int = _DEFAULTS.threads,
    ) -> None:
        if not model_path or not os.path.isfile(model_path):
            raise DetectorConfigError(f"YuNet model file {model_path!r} does not exist")
        if not 0 < score_threshold < 1:
            raise DetectorConfigError(f"score_threshold {score_threshold} is not in (0, 1)")
        self.model_path = model_path
        self.score_threshold = score_threshold
        self.min_size = min_size
        self.runtime = runtime
        self._input_size: tuple[int, int] | None = None
        self._onnx: OnnxYuNet | None = None
        self.net: cv2.FaceDetectorYN | None = None
        try:
            if runtime == "onnxruntime":
                self._onnx = OnnxYuNet(model_path, score_threshold, nms_threshold, top_k, threads)
            elif runtime == "opencv":
                # The input size is a placeholder: detect() sets the real one for each frame size.
                self.net = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold, nms_threshold, top_k)
            else:
                raise DetectorConfigError(f"unknown YuNet runtime {runtime!r} (onnxruntime, opencv)")
        except DetectorConfigError:
            raise
        except Exception as exc:  # cv2.error, or ONNX Runtime's own exception types for a bad file
            raise DetectorConfigError(f"cannot load YuNet model {model_path!r} on {runtime}: {exc}") from exc

    def detect(self, image_bgr: np.ndarray) -> Detections:
        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        if self._onnx is not None:
            faces = self._onnx.detect(image_bgr)
        else:
            assert self.net is not None
            height, width = image_bgr.shape[:2]
            if self._input_size != (width, height):
                # YuNet's anchors depend on the input size; setting it per new frame size keeps every
                # camera's resolution valid through one detector instance.
                self.net.setInputSize((width, height))
                self._input_size = (width, height)
            _, faces = self.net.detect(image_bgr)
        if faces is None or len(faces) == 0:
            return Detections.empty(with_landmarks=True)
        # Rows: x, y, w, h, 5 landmarks (x, y), score.
        found = Detections(np.round(faces[:, :4]), faces[:, -1], faces[:, 4:14])
        return found.at_least(self.min_size)


def build_detector(
    backend: str,
    model_path: str | None = None,
    score_threshold: float = _DEFAULTS.score_threshold,
    min_size: int = 24,
    roll_passes: tuple[float, ...] = (),
    runtime: YuNetRuntime = _DEFAULTS.runtime,
    threads: int = _DEFAULTS.threads,
) -> FaceDetector:
    """A detector by name ("haar" or "yunet"); ``min_size`` in the pixels of the images it will see;
    ``roll_passes``: also detect on the image turned by these angles (:class:`RolledPasses`);
    ``runtime`` and ``threads``: YuNet's (see :class:`YuNetDetector`)."""
    detector: FaceDetector
    if backend == "haar":
        detector = HaarDetector(min_size=min_size)
    elif backend == "yunet":
        detector = YuNetDetector(
            model_path or YUNET_MODEL,
            score_threshold=score_threshold,
            min_size=min_size,
            runtime=runtime,
            threads=threads,
        )
    else:
        raise DetectorConfigError(f"unknown detector backend {backend!r} (haar, yunet)")
    return RolledPasses(detector, roll_passes) if roll_passes else detector


class RolledPasses:
    """A detector that also looks at the image turned by each of ``angles`` degrees about its centre,
    for heads rolled further than the inner detector finds (YuNet loses faces past about 20 degrees).

    A turned pass sees the image at the same size (its corners cut off; a face there is found by the
    upright pass or not at all), optionally shrunk by ``downscale``. Its boxes and landmarks are
    mapped back to the image's pixels, and overlapping faces from all passes are merged keeping the
    most confident one, so a face found upright in a turned pass also gets landmarks read from an
    upright face.
    """

    def __init__(
        self, inner: FaceDetector, angles: tuple[float, ...] = (30.0, -30.0), downscale: float = 1.0, iou: float = 0.3
    ) -> None:
        if not 0 < downscale <= 1:
            raise DetectorConfigError(f"rolled-pass downscale {downscale} is not in (0, 1]")
        self.inner = inner
        self.angles = tuple(float(a) for a in angles)
        self.downscale = downscale
        self.iou = iou
        self.min_size = inner.min_size

    def detect(self, image_bgr: np.ndarray, angles: tuple[float, ...] | None = None) -> Detections:
        """The upright pass plus a turned pass for each of ``angles`` (None: all of :attr:`angles`)."""
        found = [self.inner.detect(image_bgr)]
        height, width = image_bgr.shape[:2]
        size = (max(1, round(width * self.downscale)), max(1, round(height * self.downscale)))
        for angle in self.angles if angles is None else angles:
            to_turned = cv2.getRotationMatrix2D((width / 2, height / 2), -angle, self.downscale)
            to_turned[:, 2] += np.array([size[0] / 2 - width / 2, size[1] / 2 - height / 2])
            turned = cv2.warpAffine(image_bgr, to_turned, size, borderMode=cv2.BORDER_REPLICATE)
            saved = self.inner.min_size
            self.inner.min_size = max(1, int(saved * self.downscale))
            try:
                faces = self.inner.detect(turned)
            finally:
                self.inner.min_size = saved
            if len(faces):
                found.append(_map_back(faces, cv2.invertAffineTransform(to_turned)))
        return merge_detections(found, self.iou)


def _map_back(faces: Detections, matrix: np.ndarray) -> Detections:
    """Detections in the pixels ``matrix`` (2x3) maps to: box centres and landmarks move exactly, box
    sides scale by the matrix's scale (an upright box of a turned face stays about as large)."""
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    centres = faces.boxes[:, :2] + faces.boxes[:, 2:] / 2
    centres = centres @ matrix[:, :2].T + matrix[:, 2]
    sides = faces.boxes[:, 2:] * scale
    boxes = np.round(np.hstack([centres - sides / 2, sides]))
    landmarks = None
    if faces.landmarks is not None:
        landmarks = faces.landmarks @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    return Detections(boxes, faces.scores, landmarks)


def merge_detections(parts: list[Detections], iou: float) -> Detections:
    """All detections of ``parts``, overlapping ones (IoU >= ``iou``) merged into the most confident."""
    from emostream.boxes import iou_matrix

    if len(parts) == 1:
        return parts[0]
    with_landmarks = all(p.landmarks is not None for p in parts)
    boxes = np.concatenate([p.boxes for p in parts])
    scores = np.concatenate([p.scores for p in parts])
    landmarks = np.concatenate([p.landmarks for p in parts if p.landmarks is not None]) if with_landmarks else None
    if not len(boxes):
        return Detections.empty(with_landmarks)
    order = np.argsort(-scores, kind="stable")
    overlaps = iou_matrix(boxes, boxes)
    keep: list[int] = []
    for i in order:
        if all(overlaps[i, k] < iou for k in keep):
            keep.append(int(i))
    index = np.array(sorted(keep))
    return Detections(boxes[index], scores[index], None if landmarks is None else landmarks[index])
