"""Annotated video output: the PREVIEW wire message, sink.annotate's drawing and blurring, the recorder's
join of previews with events, and the recorder's place in the plan. A whole launcher run writing a
video is tests/system/test_record_launcher.py.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from capture.preview import make_preview
from emostream.wire import (
    CameraEvent,
    EmotionEvent,
    FaceEmotion,
    Frame,
    Preview,
    WireError,
    decode_preview,
    encode_preview,
)
from sink.annotate import EMOTION_COLORS, blur_faces, draw_event, face_label
from sink.record import Recorder
from support import assert_previews_planned, shared_path

# ---------------------------------------------------------------------------------------------
# PREVIEW wire message
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lena() -> np.ndarray:
    return cv2.imread(str(shared_path("media", "lena.jpg")))


@pytest.fixture(scope="module")
def lena_box(lena) -> list[int]:
    """The face box the Haar detector finds on lena.jpg: a real box, as in an event."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = cascade.detectMultiScale(cv2.cvtColor(lena, cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(60, 60))
    assert len(found) == 1
    return [int(v) for v in found[0]]


def test_preview_downscales_to_640_wide_and_round_trips(lena):
    big = cv2.resize(lena, (1280, 720))
    preview = make_preview(Frame("cam0", 41, 1700000000.5, big))
    assert preview.image.shape == (360, 640, 3) and preview.scale == 0.5
    parts = encode_preview(preview)
    assert parts[0] == b"cam0"
    decoded = decode_preview(parts)
    assert (decoded.camera, decoded.seq, decoded.ts_capture, decoded.scale) == ("cam0", 41, 1700000000.5, 0.5)
    assert decoded.image.shape == (360, 640, 3)
    assert np.abs(decoded.image.astype(int) - preview.image.astype(int)).mean() < 4  # JPEG q75
    small = make_preview(Frame("cam0", 0, 0.0, lena))  # 512 wide: never enlarged
    assert small.scale == 1.0 and small.image is lena
    assert decode_preview([memoryview(p) for p in encode_preview(small)]).image.shape == (512, 512, 3)


def _with_header(parts, **changes):
    header = json.loads(parts[1])
    header.update(changes)
    return [parts[0], json.dumps(header).encode(), parts[2]]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p[:2], "bad_parts"),
        (lambda p: [p[0], b"{not json", p[2]], "bad_header"),
        (lambda p: _with_header(p, v=2), "bad_version"),
        (lambda p: [b"other", p[1], p[2]], "wrong_topic"),
        (lambda p: _with_header(p, camera="no spaces"), "bad_field"),
        (lambda p: _with_header(p, seq=-1), "bad_field"),
        (lambda p: _with_header(p, scale=0), "bad_field"),
        (lambda p: _with_header(p, scale=1.5), "bad_field"),
        (lambda p: _with_header(p, scale="half"), "bad_field"),
        (lambda p: _with_header(p, shape=[48, 64, 4]), "bad_field"),
        (lambda p: _with_header(p, shape=[49, 64, 3]), "bad_payload"),
        (lambda p: [p[0], p[1], b""], "bad_payload"),
        (lambda p: [p[0], p[1], b"\xff\xd8 not a jpeg"], "bad_payload"),
        (lambda p: [p[0], p[1], bytes(p[2])[: len(p[2]) // 3]], "bad_payload"),
        (lambda p: [p[0], p[1], 12345], "bad_part"),
    ],
)
def test_malformed_previews_are_rejected_with_a_reason(mutate, reason):
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    parts = encode_preview(Preview("cam0", 3, 1.0, image, 0.25))
    with pytest.raises(WireError) as info:
        decode_preview(mutate(parts))
    assert info.value.reason == reason


def test_preview_encoder_refuses_bad_images_and_scales():
    with pytest.raises(ValueError):
        encode_preview(Preview("cam0", 0, 0.0, np.zeros((8, 8), np.uint8)))
    with pytest.raises(ValueError):
        encode_preview(Preview("cam0", 0, 0.0, np.zeros((8, 8, 3), np.uint8), scale=2.0))


# ---------------------------------------------------------------------------------------------
# sink.annotate
# ---------------------------------------------------------------------------------------------


def _event(box, emotion="happy", confidence=0.87, track=3, frame=0, camera="cam0") -> EmotionEvent:
    face = FaceEmotion(box, emotion, confidence, {}, track=track)
    return EmotionEvent(camera, frame, 0.0, 0.0, [face])


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.any(a != b, axis=2)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_draw_event_draws_the_box_in_the_emotion_color_and_a_label(lena, lena_box, scale):
    image = lena if scale == 1.0 else cv2.resize(lena, (256, 256), interpolation=cv2.INTER_AREA)
    before = image.copy()
    drawn = draw_event(image.copy(), _event(lena_box), scale)
    x, y, w, h = (round(v * scale) for v in lena_box)
    color = EMOTION_COLORS["happy"]
    # The outline: every pixel of the box's left and right edges and its bottom edge is the emotion color.
    for edge in (drawn[y + 2 : y + h - 2, x], drawn[y + 2 : y + h - 2, x + w - 1], drawn[y + h - 1, x + 2 : x + w - 2]):
        assert (edge == color).all()
    # Inside the box (off the outline) and away from box and label, nothing changed.
    inner = (slice(y + 4, y + h - 4), slice(x + 4, x + w - 4))
    assert not _changed(drawn[inner], before[inner]).any()
    changed = _changed(drawn, before)
    changed[max(0, y - 40) : y + h + 2, max(0, x - 2) : image.shape[1]] = False
    assert not changed.any(), "pixels outside the box and its label changed"
    # The label: a filled band above the box in the emotion color, with text in it.
    band = drawn[max(0, y - 12) : y - 3, x : x + 40]
    assert (band == color).all(axis=2).mean() > 0.3 and (band != color).any(axis=2).any()
    assert face_label(_event(lena_box).faces[0]) == "happy 87% #3"


def test_draw_event_ignores_camera_events_and_empty_faces(lena):
    image = lena.copy()
    draw_event(image, CameraEvent("cam0", 0.0, "up", "frames flow"))
    draw_event(image, EmotionEvent("cam0", 0, 0.0, 0.0, []))
    draw_event(image, None)
    np.testing.assert_array_equal(image, lena)


def _sharpness(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def test_blur_faces_pixelates_the_face_and_leaves_the_rest(lena, lena_box):
    blurred = blur_faces(lena.copy(), _event(lena_box), 1.0)
    x, y, w, h = lena_box
    inner = (slice(y + 5, y + h - 5), slice(x + 5, x + w - 5))
    gray_before = cv2.cvtColor(lena, cv2.COLOR_BGR2GRAY)[inner]
    gray_after = cv2.cvtColor(blurred, cv2.COLOR_BGR2GRAY)[inner]
    assert _sharpness(gray_after) < _sharpness(gray_before) / 10
    assert np.abs(gray_after.astype(int) - gray_before.astype(int)).mean() > 15
    changed = _changed(blurred, lena)
    margin_x, margin_y = round(0.15 * w) + 1, round(0.15 * h) + 1
    changed[max(0, y - margin_y) : y + h + margin_y, max(0, x - margin_x) : x + w + margin_x] = False
    assert not changed.any(), "pixels outside the face box (plus margin) changed"


# ---------------------------------------------------------------------------------------------
# The recorder's join (no sockets)
# ---------------------------------------------------------------------------------------------


def test_recorder_joins_previews_with_events_drops_frames_without_one_and_writes_a_playable_video(
    tmp_path, lena, lena_box
):
    recorder = Recorder(tmp_path / "out", fps=10.0, max_wait_s=2.0)
    now = 100.0
    recorder.add_event(_event(lena_box, frame=0))  # an event that arrives before its preview
    for seq in range(6):
        recorder.add_preview(Preview("cam0", seq, 1000.0 + seq / 10, lena.copy(), 1.0), now)
        if seq not in (0, 3):  # frame 3 is never classified
            recorder.add_event(_event(lena_box, frame=seq, emotion="sad"))
    recorder.flush(now + 0.1)
    cam = recorder.cameras["cam0"]
    assert cam.written == 3 and list(cam.pending) == [3, 4, 5], "frame 3 holds the later ones back, in order"
    recorder.flush(now + 2.5)  # frame 3's event did not come within max_wait_s
    assert (cam.written, cam.dropped) == (5, 1)
    recorder.add_event(_event(lena_box, frame=3))  # too late: ignored
    recorder.close()
    video = cv2.VideoCapture(str(cam.path))
    frames = []
    while True:
        ok, image = video.read()
        if not ok:
            break
        frames.append(image)
    assert len(frames) == 5 and frames[0].shape == lena.shape
    x, y, w, h = lena_box
    first, last = (f[y + 10 : y + h - 10, x].astype(int) for f in (frames[0], frames[-1]))
    assert np.abs(first - EMOTION_COLORS["happy"]).max(axis=1).mean() < 40, "frame 0: the early event's box"
    assert np.abs(last - EMOTION_COLORS["sad"]).max(axis=1).mean() < 40


# ---------------------------------------------------------------------------------------------
# Config and plan
# ---------------------------------------------------------------------------------------------


def test_recorder_section_plans_previews_and_a_recorder_that_stops_last():
    from deploy.config import ConfigError, parse_config
    from deploy.plan import metrics_ports, plan_stages

    cameras = [{"id": "a", "source": "demo"}, {"id": "b", "source": "demo"}]
    plain = parse_config({"cameras": cameras})
    assert not any("--preview" in s.args for s in plan_stages(plain)) and "recorder" not in metrics_ports(plain)

    config = parse_config({"cameras": cameras, "recorder": {"out": "video", "blur_faces": True}})
    args = assert_previews_planned(config, "recorder", "sink.record")
    assert "--blur-faces" in args and args[args.index("--out") + 1] == "video"
    assert metrics_ports(config)["recorder"] == 9103 and len(set(metrics_ports(config).values())) == 7

    with pytest.raises(ConfigError, match=r"recorder\.blur: unknown key"):
        parse_config({"cameras": cameras, "recorder": {"out": "v", "blur": True}})
    with pytest.raises(ConfigError, match=r"recorder\.out: Field required"):
        parse_config({"cameras": cameras, "recorder": {}})
    many = parse_config({"cameras": [{"id": f"c{i}", "source": "demo"} for i in range(48)], "recorder": {"out": "v"}})
    with pytest.raises(ConfigError, match="at most 47 cameras"):
        plan_stages(many)


def test_a_camera_removed_from_the_followed_set_gets_its_file_closed_and_its_late_previews_counted(tmp_path):
    from emostream import metrics

    recorder = Recorder(tmp_path / "out", fps=10.0, max_wait_s=2.0)
    image = np.zeros((90, 160, 3), np.uint8)
    for seq in range(3):
        for camera in ("cam0", "door"):
            recorder.add_preview(Preview(camera, seq, 1.0 + seq, image, 1.0), 0.0)
            recorder.add_event(_event([10, 10, 30, 30], frame=seq, camera=camera))
    recorder.flush(0.0)
    door = recorder.cameras["door"]
    assert door.writer is not None and door.written == 3
    recorder.set_cameras(["cam0"])
    assert "door" not in recorder.cameras and door.writer is None, "its file is closed"
    assert len(_read_frames(door.path)) == 3, "and plays"
    dropped = metrics.FRAMES_DROPPED.labels("recorder", "door", "camera_removed")
    before = dropped._value.get()
    recorder.add_preview(Preview("door", 3, 4.0, image, 1.0), 0.0)  # in flight when it was removed
    assert dropped._value.get() == before + 1 and "door" not in recorder.cameras
    recorder.close()
    assert recorder.cameras["cam0"].written == 3


def _read_frames(path) -> list[np.ndarray]:
    video, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, image = video.read()
        if not ok:
            return frames
        frames.append(image)
