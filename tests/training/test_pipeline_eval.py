"""training.pipeline_eval's face placement and matching."""

from __future__ import annotations

import numpy as np

from training.pipeline_eval import CONDITIONS, Placement, match_face, place_face


def test_a_placed_face_sits_where_its_placement_says() -> None:
    face = np.zeros((48, 48), np.uint8)
    face[20:28, 20:28] = 255  # a bright centre: it must land at the placement's centre
    rng = np.random.default_rng(0)
    for name in ("upright", "roll30", "size64"):
        frame, placed = place_face(face, CONDITIONS[name], rng)
        assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
        assert abs(placed.roll) == CONDITIONS[name].roll
        lo, hi = CONDITIONS[name].sizes
        assert lo <= placed.side <= hi
        gray = frame[..., 0].astype(float)
        ys, xs = np.nonzero(gray >= 250)
        assert abs(xs.mean() - placed.cx) < 2 and abs(ys.mean() - placed.cy) < 2


def test_match_face_takes_the_confident_detection_of_the_placed_face() -> None:
    placed = Placement(cx=100, cy=100, side=80, roll=0)
    boxes = np.array([[70, 70, 60, 60], [65, 60, 70, 80], [300, 300, 60, 60], [95, 95, 10, 10]])
    scores = np.array([0.8, 0.9, 0.99, 0.95])
    assert match_face(boxes, scores, placed) == 1  # the far box and the tiny one do not count
    assert match_face(boxes[2:3], scores[2:3], placed) is None
    assert match_face(np.zeros((0, 4)), np.zeros(0), placed) is None


def test_the_aligned_backend_is_the_default_detector_and_the_others_differ_only_where_named() -> None:
    from detector.settings import DetectorSettings
    from training.pipeline_eval import BACKENDS

    assert DetectorSettings(**BACKENDS["yunet-align"]) == DetectorSettings()
    for name in ("haar", "yunet"):
        settings = DetectorSettings(**BACKENDS[name])
        assert not settings.align and settings.roll_passes == ()
        assert settings.backend == name
