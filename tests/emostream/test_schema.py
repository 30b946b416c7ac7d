"""The published event format: docs/event.schema.json is what emostream.schema generates from the event
types, and real events from the classifier and the sink satisfy it (checked with ``jsonschema``)."""

from __future__ import annotations

import json
import subprocess

import pytest

from emostream.schema import event_schema, schema_text
from emostream.wire import EMOTIONS, EmotionEvent, FaceEmotion, WireError, camera_event, decode_event
from support import PYTHON, REPO

SCHEMA_FILE = REPO / "docs" / "event.schema.json"


def test_the_committed_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "docs/event.schema.json is stale: python -m emostream.schema > docs/event.schema.json"
    )
    printed = subprocess.run([PYTHON, "-m", "emostream.schema"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and printed.stdout == schema_text()
    faces_schema = event_schema()["$defs"]["FaceEmotion"]
    assert faces_schema["required"] == ["box", "emotion", "confidence", "scores"]
    assert faces_schema["properties"]["emotion"]["enum"] == list(EMOTIONS)


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
