"""Classifier and sink as real processes on real sockets: faces in, validated events out."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time

import zmq

from classifier.settings import ClassifierSettings
from emostream.wire import EMOTIONS, encode_faces
from support import PYTHON, REPO, faces, metric_value, scrape, wait_for


def connected_sockets(env: dict, camera: str = "probe") -> tuple[zmq.Socket, zmq.Socket]:
    """A SUB on the sink's events of every camera, or of ``camera`` alone when one is named, and a PUSH
    into the classifier; returned once a probe frame of ``camera`` came through, its events drained.
    The classifier loads its model before binding, so the probe repeats until an event comes."""
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"" if camera == "probe" else camera.encode())
    sub.connect(f"tcp://127.0.0.1:{env['pub']}")
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{env['faces']}")
    wait_for(
        lambda: push.send_multipart(encode_faces(faces(camera, 0, 1))) or sub.poll(200),
        what="first event through classifier and sink",
    )
    while sub.poll(300):
        sub.recv_multipart()
    return sub, push


def test_faces_from_three_cameras_become_one_event_per_frame(classifier_and_sink):
    env = classifier_and_sink
    wait_for(lambda: scrape(env["cls_metrics"]) and scrape(env["sink_metrics"]), what="metrics servers")
    sub, push = connected_sockets(env)

    sent = {(cam, seq): (seq % 4) for cam in ("cam0", "cam1", "cam2") for seq in range(1, 11)}
    for (cam, seq), n in sent.items():
        push.send_multipart(encode_faces(faces(cam, seq, n)))
    push.send_multipart([b"faces", b"{not json", b""])
    push.send_multipart([b"faces"])

    received = {}
    while len(received) < len(sent) and sub.poll(10_000):
        topic, body = sub.recv_multipart()
        event = json.loads(body)
        assert topic.decode() == event["camera"]
        received[(event["camera"], event["frame"])] = event
    assert set(received) == set(sent)
    for key, event in received.items():
        assert len(event["faces"]) == sent[key]
        for face in event["faces"]:
            assert face["emotion"] in EMOTIONS and set(face["scores"]) == set(EMOTIONS)
            assert abs(sum(face["scores"].values()) - 1) < 0.01
            # Tracking: a track id, the smoothed scores (the label shown) and the raw label beside them.
            assert isinstance(face["track"], int) and face["track"] >= 1
            assert set(face["smoothed"]) == set(EMOTIONS) and abs(sum(face["smoothed"].values()) - 1) < 0.01
            assert face["smoothed"][face["emotion"]] == max(face["smoothed"].values())
            assert face["scores"][face["raw_emotion"]] == max(face["scores"].values())
        assert len({face["track"] for face in event["faces"]}) == len(event["faces"]), "one track per face"
    for cam in ("cam0", "cam1", "cam2"):
        frames = [e["frame"] for e in received.values() if e["camera"] == cam]
        assert frames == sorted(frames)

    cls_text = wait_for(
        lambda: (
            (t := scrape(env["cls_metrics"]))
            and metric_value(t, "emostream_frames_dropped_total", stage="classifier") >= 2
            and t
        ),
        what="malformed messages counted by the classifier",
    )
    assert metric_value(cls_text, "emostream_frames_dropped_total", reason="bad_header") == 1
    assert metric_value(cls_text, "emostream_frames_dropped_total", reason="bad_parts") == 1
    assert metric_value(cls_text, "emostream_classifier_batch_size_count") >= 1
    # Every face sent was either scored by the model (in a batch) or took its track's last scores
    # (classify_every); the probes before add some of each, more or fewer as the start-up took.
    scored = metric_value(cls_text, "emostream_classifier_batch_size_sum")
    reused = metric_value(cls_text, "emostream_classifier_faces_reused_total")
    assert scored + reused >= sum(sent.values())
    assert metric_value(cls_text, "emostream_frames_total", stage="classifier", camera="cam1") == 10
    assert metric_value(cls_text, "emostream_emotions_total", camera="cam2") == sum(
        n for (c, _), n in sent.items() if c == "cam2"
    )
    sink_text = scrape(env["sink_metrics"])
    assert metric_value(sink_text, "emostream_event_latency_seconds_count", camera="cam0") == 10
    assert all(p.poll() is None for p in env["procs"]), "malformed input must not kill a stage"

    lines = env["jsonl"].read_text().splitlines()
    logged = {(e["camera"], e["frame"]) for e in map(json.loads, lines)}
    assert set(sent) <= logged


def test_subscribe_cli_filters_one_camera_and_stops_after_count(classifier_and_sink):
    env = classifier_and_sink
    sub = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "sink.subscribe",
            "--endpoint",
            f"tcp://127.0.0.1:{env['pub']}",
            "--camera",
            "cam1",
            "--count",
            "3",
            "--timeout",
            "60",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{env['faces']}")
    seq = 0
    while sub.poll() is None and seq < 2000:  # keep traffic flowing until the subscriber is satisfied
        seq += 1
        push.send_multipart(encode_faces(faces("cam10", seq, 1)))  # prefix of no interest: "cam1"*
        push.send_multipart(encode_faces(faces("cam1", seq, 1)))
        time.sleep(0.02)
    out, _ = sub.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines()]
    assert sub.returncode == 0
    assert len(events) == 3 and all(e["camera"] == "cam1" for e in events)


def test_old_faces_of_live_cameras_are_dropped_as_stale_and_files_lose_nothing(classifier_and_sink):
    env = classifier_and_sink
    sub, push = connected_sockets(env)
    # Captured 5 s ago (the classifier's max age is 1 s): too old for a live camera, not for a file.
    for seq in range(1, 6):
        for camera, droppable in (("live", True), ("file", False)):
            fresh = faces(camera, seq, 2)
            old = dataclasses.replace(fresh, ts_capture=fresh.ts_capture - 5.0, droppable=droppable)
            push.send_multipart(encode_faces(old))
    push.send_multipart(encode_faces(faces("live", 6, 1)))  # fresh: classified
    received = set()
    while ("live", 6) not in received or len([c for c, _ in received if c == "file"]) < 5:
        assert sub.poll(10_000), f"events missing, got {sorted(received)}"
        event = json.loads(sub.recv_multipart()[1])
        received.add((event["camera"], event["frame"]))
    assert received == {("file", seq) for seq in range(1, 6)} | {("live", 6)}
    cls_text = scrape(env["cls_metrics"])
    assert metric_value(cls_text, "emostream_frames_dropped_total", camera="live", reason="stale") == 5
    assert metric_value(cls_text, "emostream_frames_dropped_total", camera="file", reason="stale") == 0


def test_a_classifier_behind_its_live_cameras_reuses_scores_longer_and_eases_back(classifier_and_sink):
    env = classifier_and_sink
    sub, push = connected_sockets(env, "door")  # the probe is the door's frame 0

    def every() -> float:
        return metric_value(scrape(env["cls_metrics"]), "emostream_classifier_classify_every")

    def send(seq: int, age_s: float) -> tuple[float, ...]:
        """One tracked face (the same box every frame, a new random crop) of a live camera, captured
        age_s ago; returns the scores its event carries."""
        fresh = faces("door", seq, 1)
        late = dataclasses.replace(fresh, ts_capture=fresh.ts_capture - age_s, droppable=True)
        push.send_multipart(encode_faces(late))
        while True:
            assert sub.poll(10_000), f"no event for frame {seq}"
            event = json.loads(sub.recv_multipart()[1])
            if event["frame"] == seq:
                return tuple(event["faces"][0]["scores"].values())

    assert every() == 2  # classify_every
    seq = 0
    most = ClassifierSettings().classify_every_max
    # 0.4 s after capture (late: over load_latency_ms 100; not stale: under max_age_ms 1000), one frame
    # per batch, spaced so that each step of the interval may come.
    while every() < most:
        seq += 1
        assert seq < 200, "the interval never reached classify_every_max under late batches"
        send(seq, 0.4)
        time.sleep(0.12)
    scores = [send(seq + i, 0.4) for i in range(1, 2 * most + 1)]
    seq += 2 * most

    # Each crop is new, so a face the model scored has new scores; a face that reused its track's has the
    # previous frame's. With the interval at N, N - 1 frames in N reuse: of 2N frames' 2N - 1 pairs, one
    # or two are new scores (where the run starts shifts one).
    def reused_pairs(scores: list[tuple[float, ...]]) -> int:
        return sum(a == b for a, b in zip(scores, scores[1:], strict=False))

    assert 2 * most - 3 <= reused_pairs(scores) <= 2 * most - 2, scores
    # On time again: back to classify_every, one step per CALM_S of calm batches.
    deadline = time.monotonic() + 10 * most
    while every() > 2:
        seq += 1
        assert time.monotonic() < deadline, "the interval never came back to classify_every"
        send(seq, 0.0)
    scores = [send(seq + i, 0.0) for i in range(1, 9)]
    assert 3 <= reused_pairs(scores) <= 4, scores  # every other frame again
    for sock in (sub, push):
        sock.close(linger=0)
