"""The browser viewer (``python -m sink.viewer``): access rules, its JSON routes, its place in the plan,
and a whole launcher run whose annotated video really plays in headless Chromium over WebRTC."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_pipeline import pipeline_config

from conftest import REPO, assert_previews_planned, free_port
from emostream.webrtc import serve
from emostream.wire import CameraEvent, EmotionEvent, FaceEmotion, Preview
from sink.annotate import EMOTION_COLORS
from sink.viewer import ViewerJoiner, ViewerServer

# ---------------------------------------------------------------------------------------------
# Access rules
# ---------------------------------------------------------------------------------------------


def test_viewer_refuses_a_non_loopback_host_without_a_token():
    run = subprocess.run(
        [sys.executable, "-m", "sink.viewer", "--preview", "tcp://127.0.0.1:1", "--events", "tcp://127.0.0.1:2",
         "--host", "0.0.0.0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "without --token" in run.stderr


class RunningServer:
    """A ViewerServer on a free loopback port in a thread of its own; fed by hand, no sockets to ZeroMQ."""

    def __init__(self, joiner: ViewerJoiner, token: str | None = None) -> None:
        self.port = free_port()
        self.stop = threading.Event()
        server = ViewerServer(joiner, token)
        self.thread = threading.Thread(
            target=asyncio.run, args=(serve(server, "127.0.0.1", self.port, self.stop, "viewer"),)
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("viewer did not listen")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


def _face(emotion: str, box=(100, 80, 120, 120), track=1) -> FaceEmotion:
    return FaceEmotion(box, emotion, 0.9, {emotion: 0.9}, track=track)


def _feed(joiner: ViewerJoiner, camera: str, emotions_per_frame: list[list[str]]) -> None:
    now = time.monotonic()
    for seq, emotions in enumerate(emotions_per_frame):
        joiner.add_preview(Preview(camera, seq, 1000.0 + seq, np.zeros((360, 640, 3), np.uint8), 1.0), now)
        faces = [_face(e, track=i) for i, e in enumerate(emotions)]
        joiner.add_event(EmotionEvent(camera, seq, 1000.0 + seq, 1000.0 + seq, faces))
    joiner.flush(now)


def test_cameras_and_stats_routes_and_the_annotated_latest_frame():
    joiner = ViewerJoiner()
    _feed(joiner, "cam0", [["happy"], ["happy", "sad"], [], ["happy"]])
    _feed(joiner, "door", [["angry"]])
    joiner.add_event(CameraEvent("door", 1000.0, "down", "cannot open"))
    server = RunningServer(joiner)
    try:
        status, body = server.get("/cameras")
        assert status == 200
        cameras = json.loads(body)["cameras"]
        assert [c["id"] for c in cameras] == ["cam0", "door"]
        assert cameras[0]["frames"] == 4 and cameras[1]["status"] == "down"

        status, body = server.get("/stats?camera=cam0")
        stats = json.loads(body)
        assert status == 200 and stats["camera"] == "cam0"
        assert list(stats["recent"]) == list(EMOTION_COLORS)  # all 7, in a fixed order
        assert stats["recent"]["happy"] == 3 and stats["recent"]["sad"] == 1 and stats["total"]["happy"] == 3
        assert sum(stats["recent"].values()) == 4
        assert server.get("/stats?camera=nope")[0] == 404

        status, body = server.get("/")
        assert status == 200 and b"RTCPeerConnection" in body and b"iceGatheringState" in body
        assert b"http" not in body.lower() and b"src=" not in body  # no external assets
        assert server.get("/offer")[0] == 405
        assert server.get("/nothing")[0] == 404
    finally:
        server.close()
    # The latest frame is the last joined preview, drawn: the happy box in its color.
    seq, image = joiner.latest("cam0")
    assert seq == 3
    assert tuple(int(v) for v in image[140, 100]) == EMOTION_COLORS["happy"]


def test_with_a_token_every_request_needs_it():
    joiner = ViewerJoiner()
    _feed(joiner, "cam0", [["happy"]])
    server = RunningServer(joiner, token="s3cret")
    try:
        for path in ("/", "/cameras", "/stats?camera=cam0", "/cameras?token=wrong"):
            assert server.get(path)[0] == 401, path
        assert server.get("/cameras", {"Authorization": "Bearer wrong"})[0] == 401
        assert server.get("/cameras?token=s3cret")[0] == 200
        assert server.get("/stats?camera=cam0&token=s3cret")[0] == 200
        assert server.get("/cameras", {"Authorization": "Bearer s3cret"})[0] == 200
        status, body = server.get("/?token=s3cret")
        assert status == 200 and b"token" in body  # the page passes the token on
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# Config and plan
# ---------------------------------------------------------------------------------------------


def test_viewer_section_plans_previews_and_an_essential_viewer():
    from deploy.config import ConfigError, parse_config
    from deploy.plan import metrics_ports, plan_stages

    cameras = [{"id": "a", "source": "demo"}, {"id": "b", "source": "demo"}]
    config = parse_config({"cameras": cameras, "viewer": {"port": 8123, "blur_faces": True}})
    args = assert_previews_planned(config, "viewer", "sink.viewer")
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--port") + 1] == "8123"
    assert "--blur-faces" in args and "--token" not in args
    assert metrics_ports(config)["viewer"] == 9104 and len(set(metrics_ports(config).values())) == 7

    # With both, one set of previews feeds the recorder and the viewer.
    both = plan_stages(parse_config({"cameras": cameras, "recorder": {"out": "v"}, "viewer": {}}))
    assert [s.name for s in both[:2]] == ["recorder", "viewer"]
    assert sum(a == "--preview" for a in next(s for s in both if s.name == "capture-a").args) == 1

    with pytest.raises(ConfigError, match=r"viewer: .*not a loopback address: set viewer.token"):
        parse_config({"cameras": cameras, "viewer": {"host": "0.0.0.0"}})
    public = plan_stages(parse_config({"cameras": cameras, "viewer": {"host": "0.0.0.0", "token": "t"}}))
    assert public[0].args[public[0].args.index("--token") + 1] == "t"
    with pytest.raises(ConfigError, match=r"viewer\.blur: unknown key"):
        parse_config({"cameras": cameras, "viewer": {"blur": True}})


# ---------------------------------------------------------------------------------------------
# The real thing: launcher + headless Chromium over the DevTools protocol
# ---------------------------------------------------------------------------------------------

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


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _http_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _outline_match(image: np.ndarray, face: dict, scale: float = SCALE) -> float:
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


def _grab(devtools: DevTools) -> np.ndarray:
    """The frame the browser's <video> shows now, decoded there and drawn to a canvas."""
    url = devtools.evaluate(GRAB_FRAME)
    return cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)


def _recent_faces(tmp_path: Path, camera: str | None = None) -> list[dict]:
    lines = (tmp_path / "events.jsonl").read_text().splitlines()[-60:]
    events = [json.loads(line) for line in lines]
    return [f for e in events if e["type"] == "faces" and camera in (None, e["camera"]) for f in e["faces"]]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_annotated_video_plays_in_headless_chromium_over_webrtc(tmp_path):
    camera = {"id": "demo", "source": "demo", "fps": 10, "resize": [960, 540]}
    config = pipeline_config([camera], tmp_path)
    port = free_port()
    config["viewer"] = {"port": port}
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(json.dumps(config))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "deploy", "run", "--config", str(config_path), "--duration", "150"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path))
    browser = None
    devtools = None
    try:
        base = f"http://127.0.0.1:{port}"

        def demo_shown() -> bool:
            cameras = (_http_json(base + "/cameras") or {}).get("cameras", [])
            return any(c["id"] == "demo" and c["frames"] > 0 for c in cameras)

        _wait(demo_shown, 90, "the viewer to show annotated frames of the demo camera")
        browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1100,480",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = profile / "DevToolsActivePort"
        _wait(lambda: active.exists() and active.read_text().strip(), 60, "Chromium's DevTools port")
        cdp_port = int(active.read_text().split()[0])
        pages = _wait(
            lambda: [t for t in _http_json(f"http://127.0.0.1:{cdp_port}/json/list") or [] if t["type"] == "page"],
            30, "a page target",
        )  # fmt: skip
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        devtools.call("Page.enable")
        devtools.call("Page.navigate", url=base + "/")
        _wait(lambda: devtools.evaluate("!!document.getElementById('cam-demo')"), 30, "the camera list")
        devtools.evaluate("document.getElementById('cam-demo').click(), true")
        _wait(
            lambda: devtools.evaluate("(() => { const v = document.getElementById('video');"
                                      " return v.readyState >= 2 && v.videoWidth > 0 && !v.paused; })()"),
            60, "the WebRTC video to play",
        )  # fmt: skip
        size = devtools.evaluate(
            "[document.getElementById('video').videoWidth, document.getElementById('video').videoHeight]"
        )
        assert size == [640, 360]

        # Frames decoded in the browser: find an event's box drawn in its emotion color (as in test_record).
        found = None
        deadline = time.monotonic() + 60
        while found is None and time.monotonic() < deadline:
            image = _grab(devtools)
            found = next((f for f in _recent_faces(tmp_path) if _outline_match(image, f) > 0.7), None)
            if found is None:
                time.sleep(0.3)
        assert found is not None, "no event's box was seen in its emotion color in the browser's video"

        stats = _wait(
            lambda: devtools.evaluate("fetch('/stats?camera=demo').then(r => r.json())"), 10, "stats"
        )  # fmt: skip
        assert sum(stats["recent"].values()) > 0
        assert devtools.evaluate("document.getElementById('state').textContent") == "connected"
        if os.environ.get("EMOSTREAM_SAVE_SCREENSHOT") == "1":  # docs/viewer.png, for the README
            devtools.call(
                "Emulation.setDeviceMetricsOverride", width=1180, height=410, deviceScaleFactor=1, mobile=False
            )
            time.sleep(1.5)  # let the chart draw its next poll
            for _ in range(40):  # a moment when a box is on screen
                image = _grab(devtools)
                if any(_outline_match(image, f) > 0.7 for f in _recent_faces(tmp_path)):
                    break
                time.sleep(0.2)
            shot = devtools.call("Page.captureScreenshot", format="png")["data"]
            (REPO / "docs" / "viewer.png").write_bytes(base64.b64decode(shot))
    finally:
        if devtools is not None:
            devtools.close()
        if browser is not None:
            browser.terminate()
            try:
                browser.wait(20)
            except subprocess.TimeoutExpired:
                browser.kill()
        launcher.send_signal(signal.SIGINT)
        try:
            output, _ = launcher.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            output, _ = launcher.communicate()
    assert launcher.returncode == 0, output[-3000:]
    assert "started viewer" in output
