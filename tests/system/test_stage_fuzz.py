"""Malformed messages over real ZeroMQ sockets: 10,000 broken messages into each real stage.

Issue 7, "Bad input". A seeded generator (tests/support/wire_fuzz.py) sends each stage process 10,000
messages that the same decoder rejects locally; the stage must stay alive, count every one of them in
``emostream_frames_dropped_total{camera="unknown"}`` under the reason the local decode gave, and still
process a valid message sent after them. The decoders alone, under hypothesis, are in
tests/emostream/test_wire_fuzz.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from emostream.wire import (
    REJECT_REASONS,
    Credit,
    EmotionEvent,
    Faces,
    Frame,
    decode_event,
    decode_faces,
    decode_frame,
    encode_credit,
    encode_event,
    encode_faces,
    encode_frame,
)
from support import PYTHON, REPO, free_port, free_ports, http_get, metric_samples, sample, wait_for
from support.wire_fuzz import (
    BEYOND_FLOAT32,
    FLOAT32_OVERFLOW,
    TEMPLATES,
    TOO_BIG_FOR_A_FLOAT,
    TOO_MANY_DIGITS,
    empty_jpeg_frame,
    malformed_batch,
    with_raw_field,
)

#: Messages per stage process (over ZeroMQ).
STAGE_MESSAGES = 10_000
#: Receiving a reply from a stage: generous, the machine is shared; nothing is timed.
REPLY_MS = 60_000


# ------------------------------------------------------------------------------------------------
# the stage processes
# ------------------------------------------------------------------------------------------------


def start_logged_stage(module: str, log_path: Path, *args: str) -> subprocess.Popen:
    """Like conftest.start_stage, but output goes to a file: each malformed message logs a warning, and
    10,000 of them would fill a pipe nobody reads and block the stage on its next log line."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            [PYTHON, "-m", module, *args],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wire_drops(metrics_port: int, stage: str) -> Counter[str] | None:
    """The stage's drops of camera "unknown" by wire reason; None until all are exported."""
    samples = metric_samples(metrics_port)
    counts = {
        reason: sample(samples, "emostream_frames_dropped_total", stage=stage, camera="unknown", reason=reason)
        for reason in REJECT_REASONS
    }
    if any(value is None for value in counts.values()):
        return None
    return Counter({reason: int(value) for reason, value in counts.items() if value})


def wait_while_alive(proc: subprocess.Popen, predicate: Callable[[], bool], log_path: Path, what: str) -> None:
    """wait_for, except that a stage that exits fails the test at once, with its log."""
    wait_for(lambda: proc.poll() is not None or predicate(), timeout=120, what=what)
    assert proc.poll() is None, f"the stage exited with {proc.returncode} waiting for {what}\n{log_tail(log_path)}"


def wait_ready(proc: subprocess.Popen, metrics_port: int, log_path: Path) -> None:
    wait_while_alive(proc, lambda: http_get(metrics_port, "/readyz")[0] == 200, log_path, "the stage's /readyz")


def assert_survived_and_counted(
    proc: subprocess.Popen, metrics_port: int, stage: str, reasons: Counter[str], log_path: Path
) -> None:
    """Alive, live, and every malformed message counted under its reason. Exact, with no waiting: each
    test gets the reply to a valid message sent after the malformed ones, which the stage handles in order."""
    assert proc.poll() is None, f"{stage} died of malformed input\n{log_tail(log_path)}"
    assert http_get(metrics_port, "/healthz")[0] == 200
    counts = wire_drops(metrics_port, stage)
    assert counts is not None
    assert sum(counts.values()) == sum(reasons.values()) == STAGE_MESSAGES
    assert counts == reasons
    # Reported, not flooded: the log says it is happening (throttled), the metrics count every one.
    warnings = [line for line in log_path.read_text().splitlines() if "malformed" in line]
    assert 1 <= len(warnings) < 50, f"{len(warnings)} log lines for {STAGE_MESSAGES} malformed messages"


def send_all(sock: zmq.Socket, messages: list[list[bytes]], prefix: list[bytes] | None = None) -> None:
    for parts in messages:
        sock.send_multipart([*(prefix or []), *parts])


@dataclass
class PlayedDetector:
    """A real detector process between a camera and a classifier that the test plays with its own sockets."""

    proc: subprocess.Popen
    camera: zmq.Socket  # a ROUTER, as capture binds
    peer: bytes  # the worker's routing id, from its first credit
    results: zmq.Socket  # a PULL, as the classifier binds
    metrics_port: int
    log_path: Path


def start_played_detector(
    zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> PlayedDetector:
    camera = zmq_context.socket(zmq.ROUTER)
    # Mandatory: a full pipe blocks the send instead of dropping the message silently, so the count
    # the worker reports can be exact. The timeout turns a dead worker into an error, not a hang.
    camera.setsockopt(zmq.ROUTER_MANDATORY, 1)
    camera.setsockopt(zmq.SNDTIMEO, REPLY_MS)
    camera_port = camera.bind_to_random_port("tcp://127.0.0.1")
    results = zmq_context.socket(zmq.PULL)
    results_port = results.bind_to_random_port("tcp://127.0.0.1")
    metrics_port = free_port()
    log_path = tmp_path / "detector.log"
    proc = start_logged_stage(
        "detector", log_path,
        "--frames", f"tcp://127.0.0.1:{camera_port}",
        "--push", f"tcp://127.0.0.1:{results_port}",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)
    assert camera.poll(REPLY_MS), f"no credit from the worker\n{log_tail(log_path)}"
    peer = camera.recv_multipart()[0]
    return PlayedDetector(proc, camera, peer, results, metrics_port, log_path)


@dataclass
class PlayedClassifier:
    """A real classifier process between a detector and a sink that the test plays with its own sockets."""

    proc: subprocess.Popen
    push: zmq.Socket  # a PUSH, as detector workers connect
    events: zmq.Socket  # a PULL, as the sink binds
    metrics_port: int
    log_path: Path


def start_played_classifier(
    model: Path, zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> PlayedClassifier:
    events = zmq_context.socket(zmq.PULL)
    events_port = events.bind_to_random_port("tcp://127.0.0.1")
    faces_port, metrics_port = free_ports(2)
    log_path = tmp_path / "classifier.log"
    proc = start_logged_stage(
        "classifier", log_path,
        "--pull", f"tcp://127.0.0.1:{faces_port}",
        "--push", f"tcp://127.0.0.1:{events_port}",
        "--model", str(model),
        "--device", "cpu",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)
    wait_ready(proc, metrics_port, log_path)
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, REPLY_MS)
    push.connect(f"tcp://127.0.0.1:{faces_port}")
    return PlayedClassifier(proc, push, events, metrics_port, log_path)


@dataclass
class PlayedCapture:
    """A real capture process (the demo source at 5 fps) whose detector worker the test plays."""

    proc: subprocess.Popen
    worker: zmq.Socket  # a DEALER, as detector workers connect
    metrics_port: int
    log_path: Path


def start_played_capture(zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path) -> PlayedCapture:
    frames_port, metrics_port = free_ports(2)
    log_path = tmp_path / "capture.log"
    proc = start_logged_stage(
        "capture", log_path,
        "--camera", "fuzz-cam", "--source", "demo", "--fps", "5",
        "--frames", f"tcp://127.0.0.1:{frames_port}",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)
    wait_ready(proc, metrics_port, log_path)
    worker = zmq_context.socket(zmq.DEALER)
    worker.setsockopt(zmq.SNDTIMEO, REPLY_MS)
    worker.connect(f"tcp://127.0.0.1:{frames_port}")
    return PlayedCapture(proc, worker, metrics_port, log_path)


@pytest.mark.timeout(180)
def test_detector_survives_10000_malformed_frames_counts_each_and_answers_the_next_frame(
    zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    messages, reasons = malformed_batch("frame", STAGE_MESSAGES, seed=1)
    det = start_played_detector(zmq_context, processes, tmp_path)
    camera, peer, results, metrics_port, log_path = det.camera, det.peer, det.results, det.metrics_port, det.log_path

    # A camera that ignores credits: everything at once, which the worker must still survive.
    send_all(camera, messages, prefix=[peer])
    blank = np.full((48, 64, 3), 90, np.uint8)
    camera.send_multipart([peer, *encode_frame(Frame("fuzz-cam", 7, time.time(), blank))])
    assert results.poll(REPLY_MS), f"no answer to the valid frame\n{log_tail(log_path)}"
    faces = decode_faces(results.recv_multipart())
    assert (faces.camera, faces.seq, len(faces)) == ("fuzz-cam", 7, 0)
    assert not results.poll(0), "only the valid frame may produce Faces"
    assert_survived_and_counted(det.proc, metrics_port, "detector", reasons, log_path)
    samples = metric_samples(metrics_port)
    assert sample(samples, "emostream_frames_total", stage="detector", camera="fuzz-cam") == 1.0


@pytest.mark.timeout(180)
@pytest.mark.filterwarnings(FLOAT32_OVERFLOW)
def test_classifier_survives_10000_malformed_faces_counts_each_and_classifies_the_next_ones(
    tiny_model: Path, zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    messages, reasons = malformed_batch("faces", STAGE_MESSAGES, seed=2)
    cls = start_played_classifier(tiny_model, zmq_context, processes, tmp_path)
    proc, push, events, metrics_port, log_path = cls.proc, cls.push, cls.events, cls.metrics_port, cls.log_path

    send_all(push, messages)
    crops = np.full((1, 48, 48), 128, np.uint8)
    valid = Faces("fuzz-cam", 7, time.time(), time.time(), (480, 640), np.array([[1, 2, 40, 40]]), np.ones(1), crops)
    push.send_multipart(encode_faces(valid))
    assert events.poll(REPLY_MS), f"no event for the valid faces\n{log_tail(log_path)}"
    event = decode_event(events.recv_multipart())
    assert isinstance(event, EmotionEvent) and (event.camera, event.frame, len(event.faces)) == ("fuzz-cam", 7, 1)
    assert not events.poll(0), "only the valid faces may produce an event"
    assert_survived_and_counted(proc, metrics_port, "classifier", reasons, log_path)


@pytest.mark.timeout(180)
def test_sink_survives_10000_malformed_events_counts_each_and_publishes_only_valid_ones(
    zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    messages, reasons = malformed_batch("event", STAGE_MESSAGES, seed=3)
    pull_port, publish_port, metrics_port = free_ports(3)
    log_path, jsonl = tmp_path / "sink.log", tmp_path / "events.jsonl"
    proc = start_logged_stage(
        "sink", log_path,
        "--pull", f"tcp://127.0.0.1:{pull_port}",
        "--publish", f"tcp://127.0.0.1:{publish_port}",
        "--jsonl", str(jsonl),
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)
    wait_ready(proc, metrics_port, log_path)
    sub = zmq_context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{publish_port}")
    push = zmq_context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, REPLY_MS)
    push.connect(f"tcp://127.0.0.1:{pull_port}")
    # PUB drops what it publishes before the subscription arrives: probe until an event comes through.
    probes = 0

    def probe_arrived() -> bool:
        nonlocal probes
        push.send_multipart(encode_event(EmotionEvent("probe", probes, time.time(), time.time())))
        probes += 1
        return bool(sub.poll(100))

    wait_while_alive(proc, probe_arrived, log_path, "a probe event through the sink")

    send_all(push, messages)
    push.send_multipart(encode_event(EmotionEvent("fuzz-cam", 7, time.time(), time.time())))
    while True:
        assert sub.poll(REPLY_MS), f"the valid event after the malformed ones never came\n{log_tail(log_path)}"
        event = decode_event(sub.recv_multipart())
        if event.camera != "probe":
            break
    assert isinstance(event, EmotionEvent) and (event.camera, event.frame) == ("fuzz-cam", 7)
    assert_survived_and_counted(proc, metrics_port, "sink", reasons, log_path)
    # Nothing malformed reached the public outputs: the JSON Lines file holds exactly the valid events.
    logged = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(e["camera"], e["frame"]) for e in logged] == [("probe", i) for i in range(probes)] + [("fuzz-cam", 7)]


@pytest.mark.timeout(180)
def test_capture_survives_10000_malformed_credits_counts_each_and_serves_the_next_worker(
    zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    messages, reasons = malformed_batch("credit", STAGE_MESSAGES, seed=4)
    cam = start_played_capture(zmq_context, processes, tmp_path)
    # A broken detector worker, sending credits nobody can read.
    proc, worker, metrics_port, log_path = cam.proc, cam.worker, cam.metrics_port, cam.log_path

    send_all(worker, messages)
    assert not worker.poll(500), "a malformed credit must not earn a frame"
    worker.send_multipart(encode_credit(Credit("fuzz-worker", 0, 1, 0)))
    assert worker.poll(REPLY_MS), f"no frame for the valid credit\n{log_tail(log_path)}"
    frame = decode_frame(worker.recv_multipart())
    assert frame.camera == "fuzz-cam" and frame.image.shape == (480, 640, 3)
    assert not worker.poll(1000), "the valid credit has a window of one frame"
    assert_survived_and_counted(proc, metrics_port, "capture", reasons, log_path)


def test_detector_survives_a_jpeg_frame_with_an_empty_payload(
    zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    det = start_played_detector(zmq_context, processes, tmp_path)
    camera, peer, results = det.camera, det.peer, det.results
    camera.send_multipart([peer, *empty_jpeg_frame()])
    camera.send_multipart([peer, *encode_frame(Frame("fuzz-cam", 1, time.time(), np.zeros((8, 8, 3), np.uint8)))])
    wait_while_alive(det.proc, lambda: results.poll(100), det.log_path, "Faces for the valid frame")
    assert wire_drops(det.metrics_port, "detector") == Counter(bad_payload=1)


@pytest.mark.filterwarnings(FLOAT32_OVERFLOW)
def test_classifier_survives_faces_whose_score_float32_cannot_hold(
    tiny_model: Path, zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    cls = start_played_classifier(tiny_model, zmq_context, processes, tmp_path)
    proc, push, events, log_path = cls.proc, cls.push, cls.events, cls.log_path
    crops = np.zeros((1, 48, 48), np.uint8)
    # Fresh and from a file camera (not droppable): it must reach the model, not be dropped as stale.
    odd = Faces("odd-cam", 1, time.time(), time.time(), (480, 640), np.array([[1, 2, 40, 40]]), np.ones(1), crops)
    push.send_multipart(with_raw_field([bytes(p) for p in encode_faces(odd)], "scores", f"[{BEYOND_FLOAT32}]"))
    valid = Faces("fuzz-cam", 2, time.time(), time.time(), (480, 640), np.array([[1, 2, 40, 40]]), np.ones(1), crops)
    push.send_multipart(encode_faces(valid))
    wait_while_alive(proc, lambda: events.poll(100), log_path, "the event for the valid faces")
    assert decode_event(events.recv_multipart()).camera == "fuzz-cam"


def test_sink_survives_an_event_whose_timestamp_no_float_can_hold(
    zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    pull_port, metrics_port = free_ports(2)
    log_path = tmp_path / "sink.log"
    proc = start_logged_stage(
        "sink", log_path,
        "--pull", f"tcp://127.0.0.1:{pull_port}",
        "--publish", f"tcp://127.0.0.1:{free_port()}",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)
    wait_ready(proc, metrics_port, log_path)
    push = zmq_context.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{pull_port}")
    push.send_multipart(with_raw_field(TEMPLATES["event"][0], "ts_event", TOO_BIG_FOR_A_FLOAT))
    push.send_multipart(encode_event(EmotionEvent("fuzz-cam", 1, time.time(), time.time())))

    def handled_valid() -> bool:
        return sample(metric_samples(metrics_port), "emostream_frames_total", stage="sink", camera="fuzz-cam") == 1.0

    wait_while_alive(proc, handled_valid, log_path, "the valid event after the oversized number")
    assert wire_drops(metrics_port, "sink") == Counter(bad_field=1)


def test_capture_keeps_serving_workers_after_a_credit_with_a_5000_digit_number(
    zmq_context: zmq.Context, processes: list[subprocess.Popen], tmp_path: Path
) -> None:
    # A ValueError here once killed capture's sender thread: the process lived on, /healthz stayed 200
    # (the grab loop beats it), and the camera never sent a frame again.
    cam = start_played_capture(zmq_context, processes, tmp_path)
    proc, worker, log_path = cam.proc, cam.worker, cam.log_path
    worker.send_multipart(with_raw_field(TEMPLATES["credit"][0], "done", TOO_MANY_DIGITS))
    worker.send_multipart(encode_credit(Credit("fuzz-worker", 0, 1, 0)))
    thread_died = "Exception in thread"
    wait_while_alive(proc, lambda: worker.poll(100) or thread_died in log_path.read_text(), log_path, "a frame")
    assert thread_died not in log_path.read_text(), log_tail(log_path)
    assert decode_frame(worker.recv_multipart()).camera == "fuzz-cam"
