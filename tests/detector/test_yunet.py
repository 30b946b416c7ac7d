"""YuNet on ONNX Runtime (detector.yunet) against OpenCV's cv2.FaceDetectorYN on the same real images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.backends import YUNET_MODEL, DetectorConfigError, YuNetDetector
from detector.yunet import OnnxYuNet, padded_size
from support import SHARED

MEDIA = SHARED / "media"


def images() -> list[np.ndarray]:
    out = []
    for name in ("lena.jpg", "messi5.jpg", "grace_hopper.jpg"):
        path = MEDIA / name
        if not path.is_file():
            pytest.skip(f"shared test media {path} is missing (see shared/media/SOURCE.md)")
        out.append(cv2.imread(str(path)))
    cap = cv2.VideoCapture(str(MEDIA / "faces.mp4"))
    ok, frame = cap.read()
    cap.release()
    if not ok:
        pytest.skip("shared test media faces.mp4 is missing or unreadable")
    # The meeting video at half size (several faces) and at an odd size that needs padding.
    out += [cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA), frame[:333, :517]]
    return out


def test_padding_rounds_each_side_up_to_a_multiple_of_32() -> None:
    assert padded_size(640, 360) == (640, 384)
    assert padded_size(32, 33) == (32, 64)
    assert padded_size(1, 1) == (32, 32)


def test_onnxruntime_finds_the_faces_opencv_finds_with_the_same_boxes_landmarks_and_scores() -> None:
    ours = OnnxYuNet(YUNET_MODEL, score_threshold=0.5, threads=1)
    found = 0
    for image in images():
        height, width = image.shape[:2]
        reference = cv2.FaceDetectorYN.create(YUNET_MODEL, "", (width, height), 0.5, 0.3, 5000)
        _, theirs = reference.detect(image)
        theirs = np.zeros((0, 15), np.float32) if theirs is None else theirs
        mine = ours.detect(image)
        assert mine.shape == theirs.shape, (
            f"{len(mine)} faces against OpenCV's {len(theirs)} in a {width}x{height} image"
        )
        order = np.lexsort(theirs[:, :2].T), np.lexsort(mine[:, :2].T)
        np.testing.assert_allclose(mine[order[1]], theirs[order[0]], atol=0.01)
        found += len(mine)
    assert found >= 6  # three portraits and several people in the video: the comparison saw faces


def test_both_runtimes_behind_the_detector_give_the_same_detections() -> None:
    image = images()[3]
    a = YuNetDetector(YUNET_MODEL, runtime="onnxruntime", threads=1).detect(image)
    b = YuNetDetector(YUNET_MODEL, runtime="opencv").detect(image)
    assert len(a) == len(b) >= 2
    order_a, order_b = np.lexsort(a.boxes[:, :2].T), np.lexsort(b.boxes[:, :2].T)
    np.testing.assert_array_equal(a.boxes[order_a], b.boxes[order_b])
    np.testing.assert_allclose(a.scores[order_a], b.scores[order_b], atol=1e-4)


def test_a_file_that_is_not_yunet_is_a_config_error_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "not_a_model.onnx"
    garbage.write_bytes(b"this is not an onnx file")
    for runtime in ("onnxruntime", "opencv"):
        with pytest.raises(DetectorConfigError, match="not_a_model.onnx"):
            YuNetDetector(str(garbage), runtime=runtime)  # type: ignore[arg-type]
