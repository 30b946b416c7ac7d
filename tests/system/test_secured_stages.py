"""CurveZMQ security with real processes and real sockets.

A secured pipeline under the launcher delivering to an authorized subscriber, and peers without keys
or with unknown keys receiving nothing from the sink's publish endpoint or a camera's frames endpoint
while their attempts are counted in ``emostream_auth_failures_total``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import threading
import time

import pytest
import zmq

from emostream.security import CurveKeys, load_client_keys, load_keys, secure_client
from emostream.wire import Credit, EmotionEvent, FaceEmotion, decode_event, decode_frame, encode_credit, encode_event
from sink.subscribe import events
from support import (
    PYTHON,
    REPO,
    CreditingWorker,
    free_ports,
    http_get,
    make_keys,
    metric_samples,
    sample,
    start_stage,
    wait_for,
)
from support.pipeline import Pipeline, pipeline_config

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

#: How long a peer that must receive nothing is given to receive something anyway.
NOTHING_WINDOW_S = 3.0


@pytest.fixture
def stranger(tmp_path, keys_dir) -> CurveKeys:
    """A well-formed client key pair that is not in keys/authorized/, aimed at the right server key."""
    result = make_keys(tmp_path / "other", "--client", "mallory")
    assert result.returncode == 0, result.stderr
    mallory = load_client_keys(tmp_path / "other", "mallory")
    return dataclasses.replace(mallory, server_public=load_client_keys(keys_dir).server_public)


# (b) a secured pipeline under the launcher -------------------------------------------------------


def test_secured_pipeline_under_the_launcher_delivers_events_to_an_authorized_subscriber(tmp_path, keys_dir):
    # The keys fixture's folder, relative to the config file.
    config = pipeline_config([{"id": "demo", "source": "demo", "fps": 10}], tmp_path, security={"curve_keys": "keys"})
    publish = config["sink"]["publish"]
    pipeline = Pipeline(config, tmp_path, ["--duration", "240"])
    keyless = zmq.Context.instance().socket(zmq.SUB)
    try:
        keyless.setsockopt(zmq.LINGER, 0)
        keyless.setsockopt(zmq.SUBSCRIBE, b"")
        keyless.connect(publish)
        # Events can only arrive if every internal hop authenticated with the pipeline's keys:
        # detector -> camera, detector -> classifier, classifier -> sink.
        received = []
        stream = events(publish, camera="demo", timeout=150, keys=load_client_keys(keys_dir, "alice"))
        with contextlib.closing(stream):
            for event in stream:
                received.append(event)
                if any(isinstance(e, EmotionEvent) and e.faces for e in received):
                    break
        with_faces = [e for e in received if isinstance(e, EmotionEvent) and e.faces]
        assert with_faces, f"no event with a face\n{pipeline.log_text()[-3000:]}"
        assert not keyless.poll(0), "a subscriber without keys received an event"
    finally:
        keyless.close()
        code = pipeline.stop()
    assert code == 0, pipeline.log_text()[-3000:]


# (c) the sink's publish endpoint -----------------------------------------------------------------


class EventFeeder(threading.Thread):
    """Plays the classifier: a CURVE client with the pipeline's keys pushing valid events to the sink."""

    def __init__(self, context: zmq.Context, endpoint: str, keys: CurveKeys) -> None:
        super().__init__(daemon=True)
        self.context, self.endpoint, self.keys = context, endpoint, keys
        self.stop = threading.Event()

    def run(self) -> None:
        push = self.context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        secure_client(push, self.keys)
        push.connect(self.endpoint)
        face = FaceEmotion((1, 2, 3, 4), "happy", 0.9, {"happy": 0.9, "sad": 0.1})
        seq = 0
        while not self.stop.wait(0.02):
            event = EmotionEvent("cam0", seq, time.time(), time.time(), [face])
            try:
                push.send_multipart(encode_event(event), flags=zmq.NOBLOCK)
                seq += 1
            except zmq.Again:
                pass  # not connected yet
        push.close()


def subscriber(context: zmq.Context, endpoint: str, keys: CurveKeys | None) -> zmq.Socket:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    secure_client(sub, keys)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint)
    return sub


def drain(sub: zmq.Socket) -> int:
    count = 0
    while sub.poll(0):
        decode_event(sub.recv_multipart())
        count += 1
    return count


def test_sink_publishes_only_to_authorized_subscribers_and_counts_the_others(
    keys_dir, stranger, processes, zmq_context
):
    pull, publish, metrics = free_ports(3)
    pull_ep, publish_ep = f"tcp://127.0.0.1:{pull}", f"tcp://127.0.0.1:{publish}"
    processes.append(
        start_stage(
            "sink",
            "--pull",
            pull_ep,
            "--publish",
            publish_ep,
            "--metrics-port",
            str(metrics),
            "--curve-keys",
            str(keys_dir),
        )
    )
    wait_for(lambda: http_get(metrics, "/readyz")[0] == 200, timeout=60, what="sink ready")
    failures = sample(metric_samples(metrics), "emostream_auth_failures_total", stage="sink")
    assert failures == 0, "the counter is exported at 0 before any failure"

    feeder = EventFeeder(zmq_context, pull_ep, load_keys(keys_dir))
    feeder.start()
    try:
        authorized = subscriber(zmq_context, publish_ep, load_client_keys(keys_dir, "alice"))
        keyless = subscriber(zmq_context, publish_ep, None)
        unknown = subscriber(zmq_context, publish_ep, stranger)
        counts = {"authorized": 0, "keyless": 0, "unknown": 0}
        socks = {"authorized": authorized, "keyless": keyless, "unknown": unknown}

        def authorized_receives() -> bool:
            for name, sock in socks.items():
                counts[name] += drain(sock)
            return counts["authorized"] >= 5

        wait_for(authorized_receives, timeout=60, interval=0.05, what="events at the authorized subscriber")
        # Now that events demonstrably flow, the others get the same time again to receive anything.
        window_end = time.monotonic() + NOTHING_WINDOW_S
        while time.monotonic() < window_end:
            authorized_receives()
            time.sleep(0.05)
        assert counts["keyless"] == 0 and counts["unknown"] == 0, counts

        # The CLI and events() take client keys too; without them they time out empty-handed.
        cli = subprocess.run(
            [
                PYTHON,
                "-m",
                "sink.subscribe",
                "--endpoint",
                publish_ep,
                "--curve-keys",
                str(keys_dir),
                "--curve-client",
                "alice",
                "--count",
                "3",
                "--timeout",
                "60",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert cli.returncode == 0, cli.stderr
        assert [json.loads(line)["camera"] for line in cli.stdout.splitlines()] == ["cam0"] * 3
        assert list(events(publish_ep, timeout=NOTHING_WINDOW_S)) == []

        # Both refused subscribers (and the keyless events() call) were counted by the sink.
        failed = wait_for(
            lambda: sample(metric_samples(metrics), "emostream_auth_failures_total", stage="sink"),
            timeout=30,
            what="auth failures counted",
        )
        assert failed > 0
        for sock in socks.values():
            sock.close()
    finally:
        feeder.stop.set()
        feeder.join(timeout=10)


# (d) a camera's frames endpoint ------------------------------------------------------------------


def secured_worker(context: zmq.Context, endpoint: str, keys: CurveKeys) -> zmq.Socket:
    """A detector worker's DEALER with CURVE client keys, asking for one frame (conftest.CreditingWorker,
    which connects in its constructor, cannot take keys)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    secure_client(sock, keys)
    sock.connect(endpoint)
    sock.send_multipart(encode_credit(Credit("secured-test", 0, 1, 0)))
    return sock


def test_a_camera_sends_no_frame_to_an_unauthenticated_worker_and_counts_it(keys_dir, stranger, processes, zmq_context):
    port, metrics = free_ports(2)
    endpoint = f"tcp://127.0.0.1:{port}"
    processes.append(
        start_stage(
            "capture",
            "--camera",
            "cam0",
            "--source",
            "demo",
            "--fps",
            "10",
            "--frames",
            endpoint,
            "--metrics-port",
            str(metrics),
            "--curve-keys",
            str(keys_dir),
        )
    )
    wait_for(lambda: http_get(metrics, "/readyz")[0] == 200, timeout=60, what="capture ready")

    # A plain worker with a valid CREDIT message, and one with a key the camera does not know.
    keyless = CreditingWorker(zmq_context, endpoint, name="keyless")
    unknown = secured_worker(zmq_context, endpoint, stranger)
    assert keyless.receive(timeout_ms=int(NOTHING_WINDOW_S * 1000)) is None
    assert not unknown.poll(0), "an unknown key got a frame"
    failed = wait_for(
        lambda: sample(metric_samples(metrics), "emostream_auth_failures_total", stage="capture"),
        timeout=30,
        what="auth failures counted",
    )
    assert failed > 0
    samples = metric_samples(metrics)
    assert sample(samples, "emostream_frames_total", stage="capture", camera="cam0") in (None, 0.0)

    # The camera was serving all along: a worker with the pipeline's keys gets frames.
    worker = secured_worker(zmq_context, endpoint, load_keys(keys_dir))
    assert worker.poll(60_000), "the authorized worker got no frame"
    frame = decode_frame(worker.recv_multipart())
    assert frame.camera == "cam0"
    assert keyless.receive(timeout_ms=0) is None and not unknown.poll(0)
    for sock in (worker, unknown):
        sock.close()
    keyless.close()
