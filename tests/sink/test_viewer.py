"""The browser viewer (``python -m sink.viewer``): access rules, its JSON routes, its place in the plan,
and its annotated latest frame (the browser run is tests/system/test_viewer_browser.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from emostream.webrtc import serve
from emostream.wire import CameraEvent, EmotionEvent, FaceEmotion, Preview
from sink.annotate import EMOTION_COLORS
from sink.viewer import ViewerJoiner, ViewerServer
from support import REPO, assert_previews_planned, free_port

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


def test_following_a_camera_set_forgets_removed_cameras_and_counts_their_late_previews():
    from emostream import metrics

    joiner = ViewerJoiner()
    _feed(joiner, "cam0", [["happy"]])
    _feed(joiner, "door", [["angry"]])
    joiner.set_cameras(["cam0", "lobby"])
    assert [c["id"] for c in joiner.camera_list()] == ["cam0"]
    dropped = metrics.FRAMES_DROPPED.labels("viewer", "door", "camera_removed")
    before = dropped._value.get()
    _feed(joiner, "door", [["angry"], ["sad"]])  # its last previews and events, still in flight
    assert dropped._value.get() == before + 2
    assert [c["id"] for c in joiner.camera_list()] == ["cam0"]
    _feed(joiner, "lobby", [["happy"]])  # a camera added: followed from its first preview
    assert [c["id"] for c in joiner.camera_list()] == ["cam0", "lobby"]
