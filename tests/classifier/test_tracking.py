"""Face tracks and emotion smoothing (classifier/tracking.py): hand-made boxes and the event fields. YuNet
and the shipped model on the real meeting video are tests/system/test_tracking_real_video.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from classifier.batching import Batch
from classifier.service import events_for_batch
from classifier.tracking import CALM_S, CameraTracks, ReuseGovernor, Tracker, batch_lateness, smoothing_alpha
from emostream.boxes import iou_matrix
from emostream.wire import EMOTIONS, EmotionEvent, FaceEmotion, Faces, WireError, decode_event, encode_event

C = len(EMOTIONS)


def onehot(*classes: int) -> np.ndarray:
    return np.eye(C)[list(classes)]


def boxes(*xywh: tuple[int, int, int, int]) -> np.ndarray:
    return np.array(xywh, dtype=np.int32).reshape(-1, 4)


def uniform(n: int) -> np.ndarray:
    return np.full((n, C), 1.0 / C)


# ---------------------------------------------------------------------------------------------
# Tracking on hand-made boxes
# ---------------------------------------------------------------------------------------------


def test_iou_of_hand_made_boxes():
    iou = iou_matrix(boxes((0, 0, 10, 10), (100, 100, 5, 5)), boxes((5, 0, 10, 10), (0, 0, 10, 10)))
    np.testing.assert_allclose(iou, [[50 / 150, 1.0], [0.0, 0.0]])


def test_a_face_moving_a_little_keeps_its_id_and_a_new_face_gets_a_new_one():
    tracks = CameraTracks(window=1)
    ids = [int(tracks.update(seq, boxes((100 + 3 * seq, 50 + seq, 60, 60)), uniform(1))[0][0]) for seq in range(20)]
    assert ids == [1] * 20
    ids, _ = tracks.update(20, boxes((160, 70, 60, 60), (400, 50, 60, 60)), uniform(2))
    assert ids.tolist() == [1, 2]
    ids, _ = tracks.update(21, boxes((402, 52, 60, 60), (161, 70, 60, 60)), uniform(2))  # detector order changes
    assert ids.tolist() == [2, 1]


def test_a_track_survives_max_age_missed_frames_then_retires_and_its_id_is_never_reused():
    tracks = CameraTracks(window=1, max_age=3)
    face = boxes((10, 10, 50, 50))
    assert tracks.update(0, face, uniform(1))[0].tolist() == [1]
    for seq in (1, 2, 3):  # three frames without the face: within max_age
        tracks.update(seq, boxes(), uniform(0))
    assert tracks.update(4, face, uniform(1))[0].tolist() == [1], "missed 3 frames, max_age 3: same track"
    tracks.update(5, boxes(), uniform(0))
    # A gap in seq (frames lost upstream) counts as missed frames too: 5 frames since seq 4.
    assert tracks.update(9, face, uniform(1))[0].tolist() == [2], "missed 4 frames: a new track"
    assert tracks.update(10, face, uniform(1))[0].tolist() == [2]
    assert tracks.update(30, face, uniform(1))[0].tolist() == [3], "ids only ever increase"


def test_two_crossing_faces_keep_their_ids():
    tracks = CameraTracks(window=1, iou_threshold=0.3)
    seen = []
    for seq in range(30):  # A moves right, B left, 8 px a frame; they overlap in the middle
        a, b = (100 + 8 * seq, 100, 80, 80), (340 - 8 * seq, 110, 80, 80)
        ids, _ = tracks.update(seq, boxes(a, b), uniform(2))
        seen.append(ids.tolist())
    assert iou_matrix(boxes((212, 100, 80, 80)), boxes((228, 110, 80, 80)))[0, 0] > 0.5, "they really overlap"
    assert seen == [[1, 2]] * 30


def test_each_camera_has_its_own_tracks():
    tracker = Tracker(window=1)
    assert tracker.update("a", 0, boxes((0, 0, 10, 10)), uniform(1))[0].tolist() == [1]
    assert tracker.update("b", 0, boxes((0, 0, 10, 10), (50, 0, 10, 10)), uniform(2))[0].tolist() == [1, 2]
    assert tracker.update("a", 1, boxes((50, 0, 10, 10)), uniform(1))[0].tolist() == [2]


def test_a_late_frame_is_matched_without_changing_the_tracks_and_a_restarted_camera_starts_over():
    tracks = CameraTracks(window=3)  # alpha 0.5
    face, elsewhere = boxes((100, 100, 50, 50)), boxes((600, 100, 50, 50))
    tracks.update(10, face, onehot(0), ts_capture=10.0)
    tracks.update(12, face, onehot(1), ts_capture=12.0)  # gap 2: a = 0.75
    state = tracks.tracks[0].smoothed.copy()
    np.testing.assert_allclose(state[:2], [0.25, 0.75])
    # Frame 11 arrives after 12 (another detector worker was slower): same id, one EMA step, nothing stored.
    ids, smoothed = tracks.update(11, face, onehot(3), ts_capture=11.0)
    assert ids.tolist() == [1]
    np.testing.assert_allclose(smoothed[0], 0.5 * state + 0.5 * onehot(3)[0], atol=1e-6)
    np.testing.assert_array_equal(tracks.tracks[0].smoothed, state)
    assert tracks.tracks[0].last_seq == 12 and tracks.newest == (12, 12.0)
    ids, smoothed = tracks.update(11, elsewhere, onehot(4), ts_capture=11.0)  # late and unmatched
    assert ids.tolist() == [2] and len(tracks.tracks) == 1
    np.testing.assert_allclose(smoothed, onehot(4))
    # A lower seq captured later: capture restarted, its seq counts from 0 again.
    ids, smoothed = tracks.update(0, face, onehot(5), ts_capture=20.0)
    assert ids.tolist() == [3] and len(tracks.tracks) == 1
    np.testing.assert_allclose(smoothed, onehot(5))
    assert tracks.update(1, face, onehot(5), ts_capture=20.04)[0].tolist() == [3]


# ---------------------------------------------------------------------------------------------
# Smoothing
# ---------------------------------------------------------------------------------------------


def test_smoothing_matches_hand_computed_values():
    assert smoothing_alpha(1) == 1.0 and smoothing_alpha(3) == 0.5 and smoothing_alpha(8) == pytest.approx(2 / 9)
    with pytest.raises(ValueError):
        smoothing_alpha(0)
    tracks = CameraTracks(window=3)  # alpha = 2 / (3 + 1) = 0.5
    face = boxes((0, 0, 40, 40))
    p = np.array([[0.6, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0]])
    q = np.array([[0.0, 0.1, 0.1, 0.7, 0.1, 0.0, 0.0]])
    out = [tracks.update(seq, face, x)[1][0] for seq, x in enumerate([p, q, q])]
    np.testing.assert_allclose(out[0], p[0], atol=1e-6)  # a new track starts at its raw scores
    np.testing.assert_allclose(out[1], [0.3, 0.1, 0.1, 0.4, 0.1, 0.0, 0.0], atol=1e-6)  # 0.5 p + 0.5 q
    np.testing.assert_allclose(out[2], [0.15, 0.1, 0.1, 0.55, 0.1, 0.0, 0.0], atol=1e-6)  # 0.5 out1 + 0.5 q
    # Two frames missed (seq 3, 4): the state decays as if they had come, a = 1 - 0.5**3 = 0.875.
    late = tracks.update(5, face, p)[1][0]
    np.testing.assert_allclose(late, out[2] + 0.875 * (p[0] - out[2]), atol=1e-6)
    assert late.sum() == pytest.approx(1.0)


def test_window_one_is_the_identity():
    rng = np.random.default_rng(0)
    tracks = CameraTracks(window=1)
    for seq in range(10):
        probs = rng.dirichlet(np.ones(C), size=2)
        ids, smoothed = tracks.update(seq, boxes((0, 0, 40, 40), (200, 0, 40, 40)), probs)
        assert ids.tolist() == [1, 2]
        np.testing.assert_allclose(smoothed, probs, atol=1e-6)


def test_smoothing_damps_a_one_frame_blip_and_follows_a_lasting_change():
    tracks = CameraTracks(window=8)
    face = boxes((0, 0, 40, 40))
    happy, sad = np.array([[0, 0, 0, 0.8, 0.2, 0, 0]]), np.array([[0, 0, 0, 0.2, 0.8, 0, 0]])
    labels = [int(np.argmax(tracks.update(s, face, x)[1][0])) for s, x in enumerate([happy] * 5 + [sad] + [happy] * 5)]
    assert labels == [3] * 11, "one sad frame among happy ones does not flip the label"
    labels = [int(np.argmax(tracks.update(11 + s, face, sad)[1][0])) for s in range(6)]
    assert labels[-1] == 4 and labels[:2] == [3, 3], "a lasting change wins after a few frames"


# ---------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------


def frame_faces(camera: str, seq: int, face_boxes: np.ndarray) -> Faces:
    n = len(face_boxes)
    return Faces(
        camera, seq, 100.0 + seq, 100.0 + seq, (480, 640), face_boxes, np.full(n, 0.9, np.float32),
        np.zeros((n, 48, 48), np.uint8),
    )  # fmt: skip


def test_events_carry_track_raw_and_smoothed_scores_and_show_the_smoothed_label():
    tracker = Tracker(window=3)
    frames = [frame_faces("cam0", 0, boxes((0, 0, 40, 40))), frame_faces("cam0", 1, boxes((2, 0, 40, 40)))]
    happy = np.array([0.0, 0.0, 0.0, 0.7, 0.3, 0.0, 0.0])
    sad = np.array([0.0, 0.0, 0.0, 0.4, 0.6, 0.0, 0.0])
    batch = Batch(frames=frames, crops=np.zeros((2, 48, 48), np.uint8))
    events = events_for_batch(batch, np.stack([happy, sad]), list(EMOTIONS), tracker)
    second = decode_event(encode_event(events[1])).to_dict()["faces"][0]
    assert second["track"] == 1 and second["raw_emotion"] == "sad"
    assert second["emotion"] == "happy" and second["confidence"] == pytest.approx(0.55)  # 0.5 * 0.7 + 0.5 * 0.4
    assert second["scores"]["sad"] == pytest.approx(0.6) and second["smoothed"]["sad"] == pytest.approx(0.45)
    assert set(second["smoothed"]) == set(EMOTIONS) and sum(second["smoothed"].values()) == pytest.approx(1.0)
    # Without a tracker (callers of the old signature): the raw label and no tracking fields.
    plain = events_for_batch(batch, np.stack([happy, sad]), list(EMOTIONS))[1].faces[0].to_dict()
    assert plain["emotion"] == "sad" and not {"track", "smoothed", "raw_emotion"} & set(plain)


def test_events_with_and_without_tracking_fields_decode_and_bad_ones_are_rejected():
    scores = dict(zip(EMOTIONS, [0.1, 0.0, 0.0, 0.6, 0.2, 0.0, 0.1], strict=True))
    old = EmotionEvent("cam0", 1, 1.0, 2.0, [FaceEmotion((1, 2, 3, 4), "happy", 0.6, scores, 0.9)])
    assert "track" not in decode_event(encode_event(old)).to_dict()["faces"][0]
    face = FaceEmotion((1, 2, 3, 4), "happy", 0.5, scores, 0.9, track=7, smoothed=scores, raw_emotion="happy")
    body = decode_event(encode_event(EmotionEvent("cam0", 1, 1.0, 2.0, [face]))).to_dict()
    assert body["faces"][0]["track"] == 7 and body["faces"][0]["smoothed"]["happy"] == 0.6
    good = body["faces"][0]
    for bad in ({"track": -1}, {"track": "7"}, {"track": True}, {"raw_emotion": "bored"}, {"smoothed": [0.1]}):
        event = dict(body, faces=[{**good, **bad}])
        with pytest.raises(WireError) as info:
            decode_event([b"cam0", json.dumps(event).encode()])
        assert info.value.reason == "bad_field"


def test_smoothing_settings_reach_the_classifier_command_line():
    from classifier.__main__ import build_parser
    from deploy.config import ConfigError, parse_config
    from deploy.plan import plan_stages

    def classifier_args(section: dict):
        config = parse_config({"cameras": [{"id": "a", "source": "demo"}], "classifier": section})
        stage = next(s for s in plan_stages(config) if s.name == "classifier")
        return build_parser().parse_args(stage.args)

    default = classifier_args({})
    assert (default.smoothing_window, default.track_iou, default.track_max_age, default.classify_every) == (
        8, 0.3, 25, 2,
    )  # fmt: skip
    custom = classifier_args({"smoothing_window": 1, "track_iou": 0.5, "track_max_age": 3, "classify_every": 1})
    assert (custom.smoothing_window, custom.track_iou, custom.track_max_age, custom.classify_every) == (1, 0.5, 3, 1)
    with pytest.raises(ConfigError, match="classifier.smoothing_window"):
        classifier_args({"smoothing_window": 0})
    with pytest.raises(ConfigError, match="classifier.track_iou"):
        classifier_args({"track_iou": 0})
    with pytest.raises(ConfigError, match="classifier.classify_every"):
        classifier_args({"classify_every": 0})
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--pull", "x", "--push", "y", "--smoothing-window", "0"])


# ---------------------------------------------------------------------------------------------
# Scores reused along a track (classifier.classify_every)
# ---------------------------------------------------------------------------------------------


def model_of(crops: np.ndarray) -> np.ndarray:
    """A stand-in for the model: the class is the crop's pixel value, so each crop's scores are known."""
    return onehot(*[int(c[0, 0]) % C for c in crops])


def run_batches(tracker: Tracker, batches: list[list[Faces]]) -> tuple[list[np.ndarray], list[EmotionEvent]]:
    """What ClassifierService._classify does: plan, score the classified crops, fill, make events."""
    classified, events = [], []
    for frames in batches:
        batch = Batch(frames=frames, crops=np.concatenate([f.crops for f in frames]))
        plan = tracker.plan(frames)
        probs = plan.fill(model_of(batch.crops[plan.classify]))
        classified.append(plan.classify)
        events += events_for_batch(batch, probs, list(EMOTIONS), tracker, plan.classify)
    return classified, events


def face_at(camera: str, seq: int, x: int, label: int) -> Faces:
    """One face at (x, 0), its crop filled with ``label`` (what :func:`model_of` reads)."""
    return Faces(
        camera, seq, 100.0 + seq, 100.0 + seq, (480, 640), boxes((x, 0, 40, 40)), np.ones(1, np.float32),
        np.full((1, 48, 48), label, np.uint8),
    )  # fmt: skip


def test_a_steady_face_is_classified_every_other_frame_and_carries_the_last_scores_between():
    tracker = Tracker(window=1, classify_every=2)
    # One frame per batch; the crop's label changes every frame, so a reused score is visible.
    classified, events = run_batches(tracker, [[face_at("cam0", seq, seq, seq)] for seq in range(6)])
    assert [bool(c[0]) for c in classified] == [True, False, True, False, True, False]
    shown = [e.faces[0].emotion for e in events]
    assert shown == [EMOTIONS[s - s % 2] for s in range(6)]  # frame 1 shows frame 0's class, 3 shows 2's, ...
    assert len({e.faces[0].track for e in events}) == 1


def test_within_one_batch_a_face_takes_the_scores_of_its_tracks_earlier_face():
    tracker = Tracker(window=1, classify_every=2)
    run_batches(tracker, [[face_at("cam0", 0, 0, 0)]])  # track 1, classified on frame 0
    frames = [face_at("cam0", seq, seq, seq) for seq in range(1, 6)]
    plan = tracker.plan(frames)
    assert plan.classify.tolist() == [False, True, False, True, False]
    assert set(plan.stored) == {0} and plan.same_batch == {2: 1, 4: 3}
    classified, events = run_batches(Tracker(window=1, classify_every=2), [[face_at("cam0", 0, 0, 0)], frames])
    assert [e.faces[0].emotion for e in events] == [EMOTIONS[c] for c in (0, 0, 2, 2, 4, 4)]


def test_new_faces_late_frames_and_every_1_are_always_classified_and_a_swap_forgets_scores():
    tracker = Tracker(window=1, classify_every=3)
    run_batches(tracker, [[face_at("cam0", 0, 0, 0)]])
    newcomer = Faces(
        "cam0", 1, 101.0, 101.0, (480, 640), boxes((1, 0, 40, 40), (300, 0, 40, 40)), np.ones(2, np.float32),
        np.stack([np.full((48, 48), 1, np.uint8), np.full((48, 48), 5, np.uint8)]),
    )  # fmt: skip
    assert tracker.plan([newcomer]).classify.tolist() == [False, True]  # the new face at x=300 needs the model
    run_batches(tracker, [[newcomer]])
    assert tracker.plan([face_at("cam0", 1, 1, 1)]).classify.tolist() == [True]  # not newer than frame 1
    assert tracker.plan([face_at("cam1", 2, 2, 2)]).classify.tolist() == [True]  # another camera: no track yet
    assert tracker.plan([face_at("cam0", 2, 2, 2)]).classify.tolist() == [False]
    tracker.forget_scores()
    assert tracker.plan([face_at("cam0", 2, 2, 2)]).classify.tolist() == [True]
    every_frame = Tracker(window=1, classify_every=1)
    classified, _ = run_batches(every_frame, [[face_at("cam0", seq, seq, seq)] for seq in range(4)])
    assert all(c.all() for c in classified)
    with pytest.raises(ValueError, match="classify_every"):
        Tracker(classify_every=0)


def test_a_batch_of_only_reused_faces_needs_no_model_call():
    tracker = Tracker(window=1, classify_every=2)
    run_batches(tracker, [[face_at("cam0", 0, 0, 3)]])
    plan = tracker.plan([face_at("cam0", 1, 1, 6)])
    assert plan.reused == 1 and not plan.classify.any()
    assert plan.fill(np.empty((0, C))).tolist() == onehot(3).tolist()


# ---------------------------------------------------------------------------------------------
# The reuse interval under load (classifier.classify_every_max)
# ---------------------------------------------------------------------------------------------


def test_a_batch_planned_with_a_longer_interval_reuses_scores_for_that_many_frames():
    tracker = Tracker(window=1, classify_every=2)
    classified = []
    for seq in range(9):
        frames = [face_at("cam0", seq, seq, seq)]
        plan = tracker.plan(frames, every=4)
        classified.append(bool(plan.classify[0]))
        probs = plan.fill(model_of(np.concatenate([f.crops for f in frames])[plan.classify]))
        events_for_batch(Batch(frames, frames[0].crops), probs, list(EMOTIONS), tracker, plan.classify)
    assert classified == [True, False, False, False, True, False, False, False, True]


def test_the_governor_stretches_the_interval_while_batches_are_late_and_eases_back_when_calm():
    now = [0.0]
    governor = ReuseGovernor(base=2, most=4, late_s=0.1, clock=lambda: now[0])

    def at(t: float, lateness: float | None) -> int:
        now[0] = t
        return governor.observe(lateness)

    assert at(0.0, None) == 2 and at(0.0, 0.2) == 3  # late: one frame more at once
    assert at(0.05, 0.2) == 3  # not again before the last step had late_s to show
    assert at(0.15, 0.2) == 4
    assert at(1.0, 5.0) == 4  # never beyond classify_every_max
    assert at(1.1, 0.01) == 4 and at(1.1 + CALM_S - 0.01, 0.01) == 4  # on time, not yet for CALM_S
    assert at(2.25, 0.07) == 4  # neither late nor calm: the calm period starts over
    assert at(2.5, 0.01) == 4 and at(2.5 + CALM_S * 0.9, 0.01) == 4
    assert at(2.5 + CALM_S, 0.01) == 3  # CALM_S of batches under half of late_s: one frame back
    assert at(2.5 + 2 * CALM_S, 0.0) == 2
    assert at(2.5 + 9 * CALM_S, 0.0) == 2  # never under classify_every
    assert at(20.0, None) == 2  # a batch of files' frames only says nothing
    fixed = ReuseGovernor(base=2, most=2, late_s=0.1, clock=lambda: now[0])
    assert fixed.observe(9.0) == 2  # classify_every_max at classify_every: off
    with pytest.raises(ValueError, match="classify_every"):
        ReuseGovernor(base=0, most=4, late_s=0.1)


def test_a_batch_is_as_late_as_its_oldest_live_frame_and_files_are_never_late():
    def frame(camera: str, ts_capture: float, live: bool) -> Faces:
        empty = np.zeros((0, 48, 48), np.uint8)
        return Faces(camera, 0, ts_capture, ts_capture, (480, 640), boxes(), np.ones(0, np.float32), empty, live)

    live_old, live_new, from_file = frame("a", 100.0, True), frame("b", 100.2, True), frame("c", 50.0, False)
    assert batch_lateness([live_new, live_old, from_file], now=100.5) == pytest.approx(0.5)
    assert batch_lateness([from_file], now=100.5) is None
