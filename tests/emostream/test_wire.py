"""The wire format: round trips for every message kind, and rejection of malformed input."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest

from emostream import wire
from emostream.jpeg import jpeg_size
from emostream.wire import (
    EMOTIONS,
    Credit,
    EmotionEvent,
    Encoding,
    FaceEmotion,
    Faces,
    Frame,
    WireError,
    decode_credit,
    decode_event,
    decode_faces,
    decode_frame,
    encode_credit,
    encode_event,
    encode_faces,
    encode_frame,
)


def make_frame(h: int = 72, w: int = 96) -> Frame:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Frame(camera="cam0", seq=17, ts_capture=1_700_000_000.25, image=image)


def make_faces(n: int = 2) -> Faces:
    rng = np.random.default_rng(2)
    return Faces(
        camera="cam-1.a",
        seq=5,
        ts_capture=1.5,
        ts_detect=1.6,
        frame_shape=(720, 1280),
        boxes=np.array([[10 * i, 20, 30, 40] for i in range(n)], dtype=np.int32).reshape(n, 4),
        scores=np.linspace(0.5, 0.9, n, dtype=np.float32),
        crops=rng.integers(0, 256, size=(n, 48, 48), dtype=np.uint8),
    )


def header_of(parts) -> dict:
    return json.loads(bytes(parts[1]))


def with_header(parts, **changes) -> list:
    header = header_of(parts)
    header.update(changes)
    return [parts[0], json.dumps(header).encode(), *parts[2:]]


def test_raw_frame_round_trip_is_exact():
    frame = make_frame()
    decoded = decode_frame(encode_frame(frame))
    assert (decoded.camera, decoded.seq, decoded.ts_capture) == ("cam0", 17, frame.ts_capture)
    np.testing.assert_array_equal(decoded.image, frame.image)


def test_frames_are_key_frames_unless_marked_otherwise():
    frame = make_frame()
    assert "key" not in header_of(encode_frame(frame)), "the default stays off the wire"
    assert decode_frame(encode_frame(frame)).key is True
    assert decode_frame(encode_frame(dataclasses.replace(frame, key=False))).key is False


def test_decoded_values_are_frozen():
    frame = decode_frame(encode_frame(make_frame()))
    event = decode_event(encode_event(EmotionEvent("cam0", 1, 1.0, 2.0)))
    for value, name in ((frame, "key"), (decode_faces(encode_faces(make_faces(1))), "seq"), (event, "frame")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, name, 0)


def test_credit_round_trip_and_rejections():
    credit = Credit(worker="detector-0-123", done=41, window=2, load=3, interval=3)
    assert decode_credit(encode_credit(credit)) == credit
    parts = encode_credit(credit)
    for mutate, reason in [
        (lambda p: [b"frame", p[1]], "wrong_topic"),
        (lambda p: p[:1], "bad_parts"),
        (lambda p: with_header(p, done=-1), "bad_field"),
        (lambda p: with_header(p, window=1000), "bad_field"),
        (lambda p: with_header(p, interval=0), "bad_field"),
        (lambda p: with_header(p, worker=""), "bad_field"),
        (lambda p: with_header(p, v=7), "bad_version"),
    ]:
        with pytest.raises(WireError) as info:
            decode_credit(mutate(parts))
        assert info.value.reason == reason


def test_jpeg_frame_round_trip_is_close_and_smaller():
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    image[:, :80] = (40, 120, 200)
    frame = Frame("cam0", 1, 2.0, image)
    parts = encode_frame(frame, Encoding.JPEG, jpeg_quality=90)
    assert len(bytes(parts[2])) < image.nbytes
    decoded = decode_frame(parts)
    assert decoded.image.shape == image.shape
    assert np.abs(decoded.image.astype(int) - image).mean() < 3


def test_frame_decoding_accepts_memoryviews_without_copy():
    parts = [memoryview(bytes(p)) for p in encode_frame(make_frame())]
    assert decode_frame(parts).image.shape == (72, 96, 3)


def test_faces_round_trip_keeps_boxes_scores_and_crops():
    faces = make_faces(3)
    decoded = decode_faces(encode_faces(faces))
    np.testing.assert_array_equal(decoded.boxes, faces.boxes)
    np.testing.assert_allclose(decoded.scores, faces.scores, atol=1e-4)
    np.testing.assert_array_equal(decoded.crops, faces.crops)
    assert decoded.frame_shape == (720, 1280) and len(decoded) == 3


def test_faces_message_without_faces_round_trips():
    decoded = decode_faces(encode_faces(make_faces(0)))
    assert len(decoded) == 0 and decoded.crops.shape == (0, 48, 48)


def test_event_round_trip_matches_documented_shape():
    scores = dict(zip(EMOTIONS, [0.01, 0.0, 0.02, 0.9, 0.03, 0.02, 0.02], strict=True))
    event = EmotionEvent("cam0", 17, 10.0, 10.05, [FaceEmotion((1, 2, 3, 4), "happy", 0.9, scores, 0.8)])
    parts = encode_event(event)
    assert parts[0] == b"cam0"
    decoded = decode_event(parts)
    assert decoded == event and isinstance(decoded, EmotionEvent) and decoded.faces[0].box == (1, 2, 3, 4)
    body = json.loads(parts[1])
    assert decoded.to_dict() == body
    assert list(body) == ["schema", "type", "camera", "frame", "ts_capture", "ts_event", "faces"]
    assert body["schema"] == 1 and body["type"] == "faces" and body["frame"] == 17
    # ts_detect is optional: left out above, carried when the classifier sets it.
    stamped = EmotionEvent("cam0", 17, 10.0, 10.05, [], ts_detect=10.02)
    assert decode_event(encode_event(stamped)) == stamped and json.loads(encode_event(stamped)[1])["ts_detect"] == 10.02
    assert body["faces"][0] == {"box": [1, 2, 3, 4], "emotion": "happy", "confidence": 0.9, "scores": scores,
                                "detector_score": 0.8}  # fmt: skip


def test_the_event_bytes_on_the_wire_are_the_documented_compact_json():
    face = FaceEmotion((412, 120, 96, 96), "happy", 0.89, {"happy": 0.93}, 1.0, 3, {"happy": 0.89}, "happy")
    assert encode_event(EmotionEvent("cam0", 17, 1764057600.12, 1764057600.16, [face])) == [
        b"cam0",
        b'{"schema":1,"type":"faces","camera":"cam0","frame":17,"ts_capture":1764057600.12,'
        b'"ts_event":1764057600.16,"faces":[{"box":[412,120,96,96],"emotion":"happy","confidence":0.89,'
        b'"scores":{"happy":0.93},"detector_score":1.0,"track":3,"smoothed":{"happy":0.89},"raw_emotion":"happy"}]}',
    ]
    assert encode_event(wire.camera_event("door", "down", "cannot open", 1764057600.2)) == [
        b"door",
        b'{"schema":1,"type":"camera","camera":"door","ts_event":1764057600.2,"status":"down","reason":"cannot open"}',
    ]


def test_a_decoded_event_gives_back_the_json_object_it_came_from_unknown_keys_and_types_included():
    face = {"box": [1, 2, 3, 4], "emotion": "sad", "confidence": 1, "scores": {}, "gaze": [0.1, 0.2]}
    bodies = [
        {"schema": 1, "type": "faces", "camera": "c", "frame": 0, "ts_capture": 5, "ts_event": 6, "faces": [face],
         "model": "v2"},
        {"schema": 1, "type": "camera", "camera": "c", "ts_event": 1.5, "status": "up", "reason": "", "x": None},
        {"schema": 1, "type": "heartbeat", "camera": "c", "ts_event": 2.0, "uptime_s": 7},
    ]  # fmt: skip
    kinds = (EmotionEvent, wire.CameraEvent, wire.OtherEvent)
    for body, kind in zip(bodies, kinds, strict=True):
        event = decode_event([b"c", json.dumps(body).encode()])
        assert isinstance(event, kind) and event.to_dict() == body
        assert list(event.to_dict()) == list(body)
    assert decode_event([b"c", json.dumps(bodies[0]).encode()]).faces[0].extra == {"gaze": [0.1, 0.2]}


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: p[:2], "bad_parts"),
        (lambda p: [b"faces", *p[1:]], "wrong_topic"),
        (lambda p: [p[0], b"\xff\xfe", p[2]], "bad_header"),
        (lambda p: [p[0], b"[1, 2]", p[2]], "bad_header"),
        (lambda p: with_header(p, v=2), "bad_version"),
        (lambda p: with_header(p, v=True), "bad_version"),
        (lambda p: with_header(p, camera="../etc"), "bad_field"),
        (lambda p: with_header(p, camera=""), "bad_field"),
        (lambda p: with_header(p, seq=-1), "bad_field"),
        (lambda p: with_header(p, seq=True), "bad_field"),
        (lambda p: with_header(p, seq="3"), "bad_field"),
        (lambda p: with_header(p, ts_capture=None), "bad_field"),
        (lambda p: with_header(p, shape=[72, 96]), "bad_field"),
        (lambda p: with_header(p, shape=[72, 96, 1]), "bad_field"),
        (lambda p: with_header(p, shape=[0, 96, 3]), "bad_field"),
        (lambda p: with_header(p, shape=[100000, 96, 3]), "bad_field"),
        (lambda p: with_header(p, encoding="png"), "bad_field"),
        (lambda p: with_header(p, key="no"), "bad_field"),
        (lambda p: [p[0], p[1], bytes(p[2])[:-1]], "bad_payload"),
        (lambda p: [p[0], header_bytes_jpeg(p), b"not a jpeg"], "bad_payload"),
        (lambda p: [p[0], p[1], 12345], "bad_part"),
    ],
)
def test_malformed_frames_are_rejected_with_a_reason(mutate, reason):
    parts = encode_frame(make_frame())
    with pytest.raises(WireError) as info:
        decode_frame(mutate(parts))
    assert info.value.reason == reason


def header_bytes_jpeg(parts) -> bytes:
    header = header_of(parts)
    header["encoding"] = "jpeg"
    return json.dumps(header).encode()


def test_jpeg_whose_size_disagrees_with_header_is_rejected():
    parts = encode_frame(make_frame(), Encoding.JPEG)
    with pytest.raises(WireError, match="JPEG declares"):
        decode_frame(with_header(parts, shape=[10, 10, 3]))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda p: with_header(p, boxes=[[1, 2, 3]] * 2), "bad_field"),
        (lambda p: with_header(p, scores=[0.5]), "bad_field"),
        (lambda p: with_header(p, scores=[0.5, "x"]), "bad_field"),
        (lambda p: with_header(p, crop_size=4), "bad_field"),
        (lambda p: with_header(p, boxes=[[0, 0, 1, 1]] * 2000, scores=[1.0] * 2000), "bad_field"),
        (lambda p: [p[0], p[1], bytes(p[2]) + b"x"], "bad_payload"),
        (lambda p: with_header(p, frame_shape=[720]), "bad_field"),
    ],
)
def test_malformed_faces_are_rejected_with_a_reason(mutate, reason):
    parts = encode_faces(make_faces(2))
    with pytest.raises(WireError) as info:
        decode_faces(mutate(parts))
    assert info.value.reason == reason


GOOD_FACE = {"box": [0, 0, 1, 1], "emotion": "happy", "confidence": 0.5, "scores": {"happy": 0.5}}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schema": 9}, "bad_version"),
        ({"type": ""}, "bad_field"),
        ({"faces": "none"}, "bad_field"),
        ({"faces": None}, "bad_field"),
        ({"frame": -1}, "bad_field"),
        ({"ts_capture": "now"}, "bad_field"),
        ({"ts_detect": -1}, "bad_field"),
        ({"ts_detect": None}, "bad_field"),
        ({"faces": [{**GOOD_FACE, "emotion": "bored"}]}, "bad_field"),
        ({"faces": [{**GOOD_FACE, "confidence": "high"}]}, "bad_field"),
        ({"faces": [{**GOOD_FACE, "scores": {"bored": 0.5}}]}, "bad_field"),
        ({"faces": [{**GOOD_FACE, "box": [0, 0, 1]}]}, "bad_field"),
        ({"faces": [{**GOOD_FACE, "track": None}]}, "bad_field"),
        ({"faces": [GOOD_FACE, 7]}, "bad_field"),
    ],
)
def test_malformed_events_are_rejected_with_a_reason(change, reason):
    body = {**EmotionEvent("cam0", 1, 1.0, 2.0, [FaceEmotion.from_dict(GOOD_FACE)]).to_dict(), **change}
    with pytest.raises(WireError) as info:
        decode_event([b"cam0", json.dumps(body).encode()])
    assert info.value.reason == reason


def test_events_on_the_wrong_topic_or_in_the_wrong_parts_are_rejected():
    good = encode_event(EmotionEvent("cam0", 1, 1.0, 2.0, []))
    for parts, reason in (([b"cam1", good[1]], "wrong_topic"), ([good[0]], "bad_parts")):
        with pytest.raises(WireError) as info:
            decode_event(parts)
        assert info.value.reason == reason


def test_events_validate_themselves_when_built_too():
    with pytest.raises(WireError, match="bored"):
        FaceEmotion((0, 0, 1, 1), "bored", 0.5, {})
    with pytest.raises(WireError, match="camera"):
        EmotionEvent("no spaces", 1, 1.0, 2.0)


def test_random_bytes_never_raise_anything_but_wire_error():
    rng = random.Random(7)
    decoders = (decode_frame, decode_faces, decode_event, decode_credit)
    valid = [
        encode_frame(make_frame(8, 8)),
        encode_faces(make_faces(1)),
        encode_event(EmotionEvent("c", 1, 1, 1)),
        encode_credit(Credit("w", 1, 2, 0)),
    ]
    rejected = 0
    for i in range(4000):
        base = [bytes(p) for p in valid[i % 4]]
        parts = [bytearray(p) for p in base]
        for _ in range(rng.randint(1, 4)):
            target = rng.randrange(len(parts))
            if parts[target] and rng.random() < 0.7:
                parts[target][rng.randrange(len(parts[target]))] = rng.randrange(256)
            else:
                parts[target] = bytearray(rng.randbytes(rng.randint(0, 64)))
        if rng.random() < 0.1:
            parts = parts[: rng.randint(0, len(parts))]
        try:
            decoders[i % 4]([bytes(p) for p in parts])
        except WireError:
            rejected += 1
    assert rejected > 1300  # most mutations must be caught, none may escape as another exception


def test_encoder_refuses_frames_that_are_not_bgr_uint8():
    with pytest.raises(ValueError):
        encode_frame(Frame("cam0", 0, 0.0, np.zeros((4, 4), dtype=np.uint8)))
    assert wire.camera_id_error("ok-id_1.2") is None and wire.camera_id_error("a b")


def test_camera_status_events_round_trip_and_bad_status_is_rejected():
    event = wire.camera_event("cam0", "down", "cannot open: connection refused", ts_event=12.5)
    assert decode_event(encode_event(event)) == event
    for change in ({"status": "sideways"}, {"reason": 7}):
        with pytest.raises(WireError) as info:
            decode_event([b"cam0", json.dumps({**event.to_dict(), **change}).encode()])
        assert info.value.reason == "bad_field"
    with pytest.raises(ValueError):
        wire.camera_event("cam0", "sideways", "", ts_event=1.0)


def test_a_jpeg_declaring_a_huge_image_is_refused_before_it_is_decoded():
    import cv2

    small = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    assert jpeg_size(small) == (16, 16)
    sof = next(i for i in range(len(small) - 1) if small[i] == 0xFF and small[i + 1] == 0xC0)
    bomb = small[: sof + 5] + (16000).to_bytes(2, "big") + (16000).to_bytes(2, "big") + small[sof + 9 :]
    assert jpeg_size(bomb) == (16000, 16000)
    header = {"v": 1, "camera": "c", "seq": 0, "ts_capture": 1.0, "shape": [16, 16, 3], "encoding": "jpeg"}
    with pytest.raises(WireError) as info:
        decode_frame([b"frame", json.dumps(header).encode(), bomb])
    assert info.value.reason == "bad_payload" and "16000" in str(info.value)
    assert jpeg_size(b"not a jpeg") is None
