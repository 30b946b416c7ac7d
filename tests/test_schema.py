"""The published event format: docs/event.schema.json is what emostream.schema generates from the event
types, and real events from the classifier and the sink satisfy it (checked with ``jsonschema``)."""

from __future__ import annotations

import json
import subprocess

import jsonschema
import pytest
import zmq
from test_classifier_sink import classifier_and_sink, faces  # noqa: F401 - the fixture, real processes

from conftest import PYTHON, REPO, scrape, wait_for
from emostream.schema import event_schema, schema_text
from emostream.wire import EMOTIONS, EmotionEvent, FaceEmotion, WireError, camera_event, decode_event, encode_faces

SCHEMA_FILE = REPO / "docs" / "event.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "docs/event.schema.json is stale: python -m emostream.schema > docs/event.schema.json"
    )
    printed = subprocess.run([PYTHON, "-m", "emostream.schema"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and printed.stdout == schema_text()
    faces_schema = event_schema()["$defs"]["FaceEmotion"]
    assert faces_schema["required"] == ["box", "emotion", "confidence", "scores"]
    assert faces_schema["properties"]["emotion"]["enum"] == list(EMOTIONS)


def test_events_from_the_real_classifier_and_sink_satisfy_the_schema(classifier_and_sink, validator):  # noqa: F811
    env = classifier_and_sink
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(f"tcp://127.0.0.1:{env['pub']}")
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://127.0.0.1:{env['faces']}")
    try:
        wait_for(lambda: scrape(env["cls_metrics"]) and scrape(env["sink_metrics"]), what="metrics servers")
        wait_for(
            lambda: push.send_multipart(encode_faces(faces("probe", 0, 1))) or sub.poll(200),
            what="first event through classifier and sink",
        )
        sent = {("cam0", seq): seq % 4 for seq in range(1, 9)}  # 0 to 3 faces per frame
        for (camera, seq), n in sent.items():
            push.send_multipart(encode_faces(faces(camera, seq, n)))
        published = []
        while len({(e["camera"], e["frame"]) for e in published} & set(sent)) < len(sent):
            assert sub.poll(30_000), "events missing"
            published.append(json.loads(sub.recv_multipart()[1]))
    finally:
        sub.close()
        push.close()

    def logged() -> list[dict]:
        events = [json.loads(line) for line in env["jsonl"].read_text().splitlines()]
        return events if sum(e["camera"] == "cam0" for e in events) == len(sent) else []

    events = published + wait_for(logged, what="the sink's JSON Lines")
    all_faces = [face for e in events if e["camera"] == "cam0" for face in e["faces"]]
    assert len(all_faces) == 2 * sum(sent.values())  # published and logged
    for event in events:
        errors = [error.message for error in validator.iter_errors(event)]
        assert not errors, (event, errors)
    # The faces carry every optional field the classifier writes: the schema checked those too.
    assert all({"track", "smoothed", "raw_emotion", "detector_score"} <= set(face) for face in all_faces)


def test_the_schema_rejects_what_the_decoder_rejects_and_accepts_other_event_types(validator):
    face = FaceEmotion((1, 2, 3, 4), "happy", 0.9, {"happy": 0.9}, 1.0, 3, {"happy": 0.8}, "happy")
    good = EmotionEvent("cam0", 5, 10.0, 10.1, [face]).to_dict()
    for event in (good, camera_event("cam0", "up", "frames flow", 3.0).to_dict()):
        assert validator.is_valid(event)
    other = {"schema": 1, "type": "heartbeat", "camera": "cam0", "ts_event": 2.0, "anything": [1]}
    assert validator.is_valid(other) and decode_event([b"cam0", json.dumps(other).encode()]).type == "heartbeat"
    bad = [
        {**good, "faces": [{**good["faces"][0], "emotion": "bored"}]},  # an emotion no model emits
        {**good, "faces": [{**good["faces"][0], "box": [1, 2, 3]}]},
        {**good, "faces": [{**good["faces"][0], "scores": {"bored": 1.0}}]},
        {k: v for k, v in good.items() if k != "faces"},
        {**good, "frame": -1},
        {**good, "camera": "no spaces"},
        {**good, "schema": 2},
        {**camera_event("cam0", "up", "", 3.0).to_dict(), "status": "sideways"},
        {"schema": 1, "type": "", "camera": "cam0", "ts_event": 1.0},
    ]
    for event in bad:
        assert not validator.is_valid(event), event
        with pytest.raises(WireError):
            decode_event([str(event["camera"]).encode(), json.dumps(event).encode()])
