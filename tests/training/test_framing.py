"""The framing measurement's own arithmetic (training/framing.py); the CLI on real faces is in
tests/system/test_served_path_cli.py."""

from __future__ import annotations

import numpy as np

from detector.backends import YUNET_MODEL, YuNetDetector
from training.framing import image_landmarks, mirror_symmetric


def test_mirror_symmetric_averages_a_template_with_its_mirror_image() -> None:
    leaning = np.array([[0.30, 0.36], [0.66, 0.40], [0.52, 0.60], [0.34, 0.76], [0.62, 0.74]])
    # By hand: right eye (0.30, 0.36) and the mirrored left eye (1 - 0.66, 0.40) average to (0.32, 0.38).
    expected = np.array([[0.32, 0.38], [0.68, 0.38], [0.50, 0.60], [0.36, 0.75], [0.64, 0.75]])
    np.testing.assert_allclose(mirror_symmetric(leaning), expected, atol=1e-12)
    np.testing.assert_allclose(mirror_symmetric(expected), expected, atol=1e-12)


def test_an_image_without_a_face_gives_no_landmarks() -> None:
    flat = np.full((48, 48), 128, dtype=np.uint8)
    assert image_landmarks(flat, YuNetDetector(YUNET_MODEL, score_threshold=0.7, threads=1)) is None
