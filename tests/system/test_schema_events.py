"""The published event format: docs/event.schema.json is what emostream.schema generates from the event
types, and real events from the classifier and the sink satisfy it (checked with ``jsonschema``)."""

from __future__ import annotations

import json

import zmq

from emostream.wire import encode_faces
from support import faces, scrape, wait_for


def test_events_from_the_real_classifier_and_sink_satisfy_the_schema(classifier_and_sink, validator):
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
