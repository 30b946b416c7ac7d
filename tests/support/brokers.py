"""Real servers for the sink.outputs tests: Debian's mosquitto and redis-server on free loopback ports,
stopped and restarted on the same port to make an outage, and a local HTTP server for webhooks. Each
test that needs a missing binary skips and names the package (.ci/run installs them)."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from emostream.wire import EmotionEvent, FaceEmotion, encode_event
from support import free_port, wait_for


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (apt-get install {package}; .ci/run installs it)")
    return path


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """A server process on a fixed port: ``start`` waits until it accepts connections, ``stop`` ends it
    (SIGTERM: mosquitto then saves its persistent sessions) and waits until the port is closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: _listening(self.port), timeout=15, what=f"{self.command()[0]} on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.communicate(timeout=15)
        wait_for(lambda: not _listening(self.port), timeout=15, what=f"port {self.port} to close")


class Mosquitto(Server):
    """Persistent sessions survive a restart, so a subscriber with ``clean_session=False`` receives what was
    published while it was reconnecting."""

    def __init__(self, directory: Path) -> None:
        super().__init__(free_port())
        self.binary = _binary("mosquitto", "mosquitto")
        self.url = f"mqtt://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {directory}/\nmax_queued_messages 1000000\n"
            # As root mosquitto would switch to the user "mosquitto", who cannot write in a test's folder.
            "user root\n"
        )

    def command(self) -> list[str]:
        return [self.binary, "-c", str(self.config)]


class RedisServer(Server):
    """With an append-only file in ``directory``, so the streams survive a restart."""

    def __init__(self, directory: Path) -> None:
        super().__init__(free_port())
        self.binary = _binary("redis-server", "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory

    def command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes",
        ]  # fmt: skip

    def stream(self, key: str) -> list[dict[str, Any]]:
        """Every event in stream ``key``, oldest first."""
        import redis

        with redis.Redis(port=self.port) as client:
            return [json.loads(fields[b"event"]) for _, fields in client.xrange(key)]


class MqttSubscriber:
    """A real paho subscriber with a persistent session (qos 1) on ``topic``: collects every payload."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{port}", clean_session=False)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, u, mid, rc, p: self.subscribed.set()
        client.on_message = self._on_message
        client.reconnect_delay_set(0.1, 0.5)
        client.connect("127.0.0.1", port)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(10), "the test subscriber could not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, json.loads(message.payload)))

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Webhook:
    """A real HTTP server on a thread that records each POST's JSON body and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.status < 300:
                    outer.bodies.append(json.loads(body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict[str, Any]]:
        return [event for body in list(self.bodies) for event in body["events"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SilentServer:
    """A listening TCP port that accepts connections and never answers: a hung webhook."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(100)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}/events"

    def close(self) -> None:
        self.socket.close()


def face_event(camera: str, frame: int) -> EmotionEvent:
    """A valid ``faces`` event with one tracked face, as the classifier sends it."""
    scores = {"angry": 0.05, "disgust": 0.0, "fear": 0.05, "happy": 0.7, "sad": 0.05, "surprise": 0.1, "neutral": 0.05}
    face = FaceEmotion(
        box=(10, 20, 40, 40), emotion="happy", confidence=0.7, scores=scores, detector_score=0.9,
        track=1, smoothed=scores, raw_emotion="happy",
    )  # fmt: skip
    now = time.time()
    return EmotionEvent(camera=camera, frame=frame, ts_capture=now - 0.05, ts_event=now, faces=(face,))


class EventFeeder:
    """The classifier's side of the sink's input: a PUSH socket that sends real events."""

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self.socket = context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 5000)
        self.socket.connect(endpoint)

    def send(self, cameras: list[str], frames: range) -> None:
        for frame in frames:
            for camera in cameras:
                self.socket.send_multipart(encode_event(face_event(camera, frame)))

    def close(self) -> None:
        self.socket.close()


def in_order_and_complete(events: list[dict[str, Any]], cameras: list[str], frames: range) -> list[str]:
    """Problems with ``events`` as an at-least-once delivery of ``frames`` for each camera: every frame
    there, and each camera's frames first seen in order (a resend after an outage may repeat some)."""
    problems = []
    for camera in cameras:
        seen_set: set[int] = set()
        seen: list[int] = []
        for frame in (e["frame"] for e in events if e["camera"] == camera):
            if frame not in seen_set:
                seen_set.add(frame)
                seen.append(frame)
        if seen != list(frames):
            missing = sorted(set(frames) - set(seen))
            problems.append(
                f"{camera}: {len(seen)} distinct frames, missing {missing[:10]}, in order: {seen == sorted(seen)}"
            )
    return problems
