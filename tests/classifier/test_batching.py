"""Dynamic batching: batches fill from several cameras, the wait limit holds, per-camera order holds.

The batcher takes an injected clock, so these tests move time by hand instead of sleeping.
"""

from __future__ import annotations

import numpy as np
import pytest

from classifier.batching import FaceBatcher
from classifier.service import events_for_batch
from emostream.wire import EMOTIONS, Faces


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def faces(camera: str, seq: int, n: int) -> Faces:
    crops = np.full((n, 48, 48), seq % 256, dtype=np.uint8)
    boxes = np.array([[seq, i, 10, 10] for i in range(n)], dtype=np.int32).reshape(n, 4)
    return Faces(camera, seq, float(seq), seq + 0.25, (480, 640), boxes, np.ones(n, np.float32), crops)


def test_batch_fills_from_several_cameras_up_to_max_batch():
    clock = FakeClock()
    batcher = FaceBatcher(max_batch=8, max_wait_ms=50, clock=clock)
    for seq in range(3):
        for cam in ("cam0", "cam1", "cam2"):
            batcher.add(faces(cam, seq, 1))
            if batcher.ready():
                break
    assert batcher.ready(), "8 faces pending must close the batch without waiting"
    batch = batcher.take()
    assert batch.face_count == 8
    assert {f.camera for f in batch.frames} == {"cam0", "cam1", "cam2"}
    assert batch.crops.shape == (8, 48, 48)


def test_partial_batch_waits_until_max_wait_then_closes():
    clock = FakeClock()
    # Binary-exact time steps (1/4 s, 1/8 s) so the deadline comparison is exact.
    batcher = FaceBatcher(max_batch=32, max_wait_ms=250, clock=clock)
    batcher.add(faces("cam0", 0, 2))
    assert not batcher.ready()
    assert batcher.seconds_until_due() == pytest.approx(0.25)
    clock.now += 0.125
    batcher.add(faces("cam1", 0, 1))
    assert not batcher.ready(), "a newer frame must not extend the oldest frame's deadline"
    assert batcher.seconds_until_due() == pytest.approx(0.125)
    clock.now += 0.125
    assert batcher.ready()
    assert batcher.take().face_count == 3
    assert batcher.seconds_until_due() is None


def test_frames_without_faces_do_not_wait():
    batcher = FaceBatcher(max_batch=32, max_wait_ms=1000, clock=FakeClock())
    batcher.add(faces("cam0", 0, 0))
    assert batcher.ready()
    batch = batcher.take()
    assert batch.face_count == 0 and len(batch.frames) == 1


def test_frames_are_never_split_and_oversized_frame_makes_its_own_batch():
    batcher = FaceBatcher(max_batch=4, max_wait_ms=10, clock=FakeClock())
    batcher.add(faces("cam0", 0, 3))
    batcher.add(faces("cam0", 1, 6))
    first = batcher.take()
    assert [f.seq for f in first.frames] == [0] and first.face_count == 3
    second = batcher.take()
    assert [f.seq for f in second.frames] == [1] and second.face_count == 6


def test_results_per_camera_keep_frame_order_and_face_alignment():
    clock = FakeClock()
    batcher = FaceBatcher(max_batch=5, max_wait_ms=10, clock=clock)
    arrivals = [("cam0", 0, 2), ("cam1", 0, 1), ("cam0", 1, 0), ("cam0", 2, 3), ("cam1", 1, 2), ("cam0", 3, 1)]
    for cam, seq, n in arrivals:
        batcher.add(faces(cam, seq, n))
    clock.now += 1
    events = []
    while len(batcher):
        batch = batcher.take()
        # Fake model output: the score row of each face encodes its frame's seq and face index.
        rows = np.concatenate([np.eye(len(EMOTIONS))[[f.seq % 7] * len(f)] for f in batch.frames])
        events += events_for_batch(batch, rows.astype(np.float32), list(EMOTIONS))
    for cam in ("cam0", "cam1"):
        seqs = [e.frame for e in events if e.camera == cam]
        assert seqs == sorted(seqs) and len(seqs) == len([a for a in arrivals if a[0] == cam])
    for event in events:
        expected_n = next(n for c, s, n in arrivals if c == event.camera and s == event.frame)
        assert len(event.faces) == expected_n
        # The frame's own capture and detection times, whatever batch it travelled in.
        assert (event.ts_capture, event.ts_detect) == (event.frame, event.frame + 0.25)
        assert all(f.emotion == EMOTIONS[event.frame % 7] for f in event.faces)
        assert [f.box[1] for f in event.faces] == list(range(expected_n))


def test_invalid_batcher_settings_are_refused():
    with pytest.raises(ValueError):
        FaceBatcher(max_batch=0, max_wait_ms=1)
    with pytest.raises(ValueError):
        FaceBatcher(max_batch=1, max_wait_ms=-1)


def feed(batcher: FaceBatcher, clock: FakeClock, interval: float, count: int) -> None:
    """``count`` one-face frames, ``interval`` seconds apart, each batch taken as soon as it is ready."""
    for seq in range(count):
        batcher.add(faces("cam0", seq, 1))
        while batcher.ready():
            batcher.take()
        clock.now += interval


def test_adaptive_wait_closes_at_once_when_no_other_face_is_expected_in_time():
    clock = FakeClock()
    batcher = FaceBatcher(max_batch=32, max_wait_ms=50, clock=clock, adaptive=True)
    feed(batcher, clock, interval=0.1, count=8)  # 10 faces/s: one expected per 100 ms
    while len(batcher):
        batcher.take()
    assert batcher.arrival_rate() == pytest.approx(10.0, rel=0.2)
    batcher.add(faces("cam1", 0, 1))
    assert batcher.ready(), "waiting 50 ms for a face due in 100 ms only adds latency"


def test_adaptive_wait_keeps_waiting_to_fill_the_batch_under_load():
    clock = FakeClock()
    batcher = FaceBatcher(max_batch=32, max_wait_ms=50, clock=clock, adaptive=True)
    feed(batcher, clock, interval=0.005, count=100)  # 200 faces/s: ten expected per 50 ms
    while len(batcher):
        batcher.take()
    batcher.add(faces("cam1", 0, 1))
    rate = batcher.arrival_rate()
    assert rate == pytest.approx(200.0, rel=0.1)
    assert not batcher.ready(), "more faces are due before the deadline: wait for them"
    # It closes one expected inter-arrival time before max_wait: the last face it waits for.
    assert batcher.seconds_until_due() == pytest.approx(0.050 - 1.0 / rate, abs=1e-9)
    clock.now += 0.050 - 1.0 / rate
    assert batcher.ready()


def test_adaptive_wait_without_history_waits_the_full_max_wait():
    clock = FakeClock()
    batcher = FaceBatcher(max_batch=32, max_wait_ms=250, clock=clock, adaptive=True)
    batcher.add(faces("cam0", 0, 1))
    assert batcher.arrival_rate() is None
    assert batcher.seconds_until_due() == pytest.approx(0.25)
