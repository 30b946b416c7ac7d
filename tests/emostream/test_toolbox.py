"""emostream's small toolbox: boxes, percentiles, JSON values."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from emostream.boxes import box_corners, clip_boxes, iou_matrix, scale_boxes
from emostream.jsonutil import json_ready
from emostream.stats import Reservoir, percentiles


def test_iou_of_hand_made_boxes() -> None:
    a = [[0, 0, 10, 10], [0, 0, 0, 0]]
    b = [[5, 0, 10, 10], [20, 20, 5, 5], [0, 0, 10, 10]]
    got = iou_matrix(a, b)
    assert got.shape == (2, 3)
    assert got[0, 0] == pytest.approx(50 / 150) and got[0, 1] == 0.0 and got[0, 2] == 1.0
    assert not got[1].any()  # a box with no area overlaps nothing
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)


def test_scale_and_clip_boxes() -> None:
    scaled = scale_boxes([[10, 20, 30, 40]], (100, 200), (50, 400))
    assert scaled.tolist() == [[20, 10, 60, 20]] and scaled.dtype == np.int32
    clipped = clip_boxes([[-5, 10, 20, 100], [90, 90, 20, 20]], (100, 100, 3))
    assert clipped.tolist() == [[0, 10, 15, 90], [90, 90, 10, 10]]
    assert box_corners([10, 10, 20, 20], 2.0, (100, 100), margin=0.5) == (0, 0, 80, 80)
    assert box_corners([200, 200, 5, 5], 1.0, (100, 100)) is None


def test_percentiles_match_numpy_and_name_their_keys() -> None:
    values = [0.010, 0.020, 0.030, 0.500]
    got = percentiles(values, scale=1000.0)
    assert list(got) == ["p50", "p95", "p99"]
    for key, p in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert got[key] == pytest.approx(float(np.percentile(np.array(values) * 1000, p)))
    assert all(math.isnan(v) for v in percentiles([]).values())
    assert list(percentiles(values, (90, 99.9))) == ["p90", "p99.9"]


def test_json_ready_gives_strict_json() -> None:
    @dataclass
    class Result:
        fps: float
        where: Path

    value = {
        1: np.float32(0.5),
        "a": np.arange(3),
        "nan": float("nan"),
        "inf": np.float64("inf"),
        "t": (1, 2),
        "r": Result(2.0, Path("/x")),
    }
    text = json.dumps(json_ready(value), allow_nan=False)
    assert json.loads(text) == {
        "1": 0.5,
        "a": [0, 1, 2],
        "nan": None,
        "inf": None,
        "t": [1, 2],
        "r": {"fps": 2.0, "where": "/x"},
    }


def test_a_reservoir_keeps_a_bounded_uniform_sample_whose_percentiles_track_the_whole_stream() -> None:
    values = np.random.default_rng(1).exponential(0.05, 200_000)
    reservoir = Reservoir(capacity=5_000, seed=3)
    for v in values:
        reservoir.add(float(v))
    assert len(reservoir) == 5_000 and reservoir.seen == 200_000
    # Uniform over the stream: as many late values as early ones, not only the first 5,000.
    late = set(values[100_000:].tolist())
    assert sum(1 for v in reservoir if v in late) > 2_000
    sampled, exact = percentiles(reservoir), percentiles(values)
    for key in ("p50", "p95", "p99"):
        assert sampled[key] == pytest.approx(exact[key], rel=0.08), key
    # Below capacity it holds every value, in order.
    small = Reservoir(capacity=10)
    for v in (3.0, 1.0, 2.0):
        small.add(v)
    assert list(small) == [3.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        Reservoir(capacity=0)
