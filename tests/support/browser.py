"""Headless Chromium driven over the DevTools protocol, for the tests that play video in a real browser
(the viewer and the WebRTC ingest)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

from sink.annotate import EMOTION_COLORS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCALE = 640 / 960  # the demo camera resized to 960x540, previews 640x360


class DevTools:
    """The smallest client of the DevTools protocol: a websocket (RFC 6455) over a plain socket."""

    def __init__(self, url: str) -> None:
        rest = url.removeprefix("ws://")
        hostport, path = rest.split("/", 1)
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "DevTools closed the websocket handshake"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "DevTools closed the websocket"
            data += chunk
        return data

    def _recv_message(self) -> dict:
        payload = b""
        while True:
            b0, b1 = self._recv_exact(2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(self._recv_exact(2), "big")
            elif length == 127:
                length = int.from_bytes(self._recv_exact(8), "big")
            payload += self._recv_exact(length)
            if b0 & 0x80:  # FIN
                return json.loads(payload)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(data) < 126:
            header += bytes([0x80 | len(data)])
        elif len(data) < 65536:
            header += bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
        else:
            header += bytes([0x80 | 127]) + len(data).to_bytes(8, "big")
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            message = self._recv_message()
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self) -> None:
        self.sock.close()


def poll(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def outline_match(image: np.ndarray, face: dict, scale: float = SCALE) -> float:
    """Fraction of the (scaled) box's left edge whose pixels are the face's emotion color (VP8 tolerance)."""
    x, y, w, h = (round(v * scale) for v in face["box"])
    if x < 1 or y < 0 or x + w > image.shape[1] or y + h > image.shape[0]:
        return 0.0
    best = 0.0
    for dx in (-1, 0, 1):  # the codec may smear a 2-pixel line by one pixel
        edge = image[y + 3 : y + h - 3, x + dx].astype(int)
        best = max(best, float((np.abs(edge - EMOTION_COLORS[face["emotion"]]).max(axis=1) < 70).mean()))
    return best


GRAB_FRAME = """(() => {
  const v = document.getElementById('video');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  return c.toDataURL('image/png');
})()"""


def grab_video(devtools: DevTools) -> np.ndarray:
    """The frame the browser's <video> shows now, decoded there and drawn to a canvas."""
    url = devtools.evaluate(GRAB_FRAME)
    return cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)


def recent_faces(tmp_path: Path, camera: str | None = None) -> list[dict]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()[-60:]
    events = [json.loads(line) for line in lines]
    return [f for e in events if e["type"] == "faces" and camera in (None, e["camera"]) for f in e["faces"]]
