"""Webcams from browsers (``source: webrtc``, ``python -m capture.webrtc_ingest``): slot assignment,
the source kind, the plan, and a whole launcher run fed by two tabs of headless Chromium publishing a
fake webcam (a .y4m made from faces.mp4) over WebRTC; closing one tab takes its camera down."""

from __future__ import annotations

import fractions
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
import zmq

from support import REPO, free_port, free_port_range, shared_path
from support.browser import CHROMIUM, DevTools, grab_video, http_json, outline_match, poll, recent_faces
from support.pipeline import pipeline_config

STATE = "(document.getElementById('state') || {}).textContent"


# ---------------------------------------------------------------------------------------------
# The real thing
# ---------------------------------------------------------------------------------------------


def _fake_webcam(path: Path, seconds: float = 3.0, fps: int = 15) -> None:
    """A .y4m for Chromium's fake webcam: the first seconds of faces.mp4 at 640x360."""
    import av

    with av.open(str(shared_path("media", "faces.mp4"))) as src, av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("wrapped_avframe", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        step = src.streams.video[0].average_rate / fps
        written = 0
        for index, frame in enumerate(src.decode(video=0)):
            if index >= written * step:
                image = frame.reformat(width=640, height=360, format="yuv420p")
                image.pts, image.time_base = written, fractions.Fraction(1, fps)
                for packet in stream.encode(image):
                    out.mux(packet)
                written += 1
                if written >= seconds * fps:
                    break
        for packet in stream.encode():
            out.mux(packet)


class Chromium:
    def __init__(self, profile: Path, y4m: Path) -> None:
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
             "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-video-capture={y4m}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = profile / "DevToolsActivePort"
        poll(lambda: active.exists() and active.read_text().strip(), 60, "Chromium's DevTools port")
        self.port = int(active.read_text().split()[0])

    def open_tab(self, url: str) -> tuple[str, DevTools]:
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?{url}", method="PUT"), timeout=10
        ) as response:
            target = json.loads(response.read())
        return target["id"], DevTools(target["webSocketDebuggerUrl"])

    def close_tab(self, target: str) -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/close/{target}", timeout=10).read()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_two_browser_tabs_become_two_cameras_and_a_closed_one_goes_down(tmp_path):
    y4m = tmp_path / "webcam.y4m"
    _fake_webcam(y4m)
    cameras = [{"id": "web0", "source": "webrtc", "fps": 8}, {"id": "web1", "source": "webrtc", "fps": 8}]
    config = pipeline_config(cameras, tmp_path)
    config["network"]["base_port"] = free_port_range(50 + 2 * len(cameras) + 1)
    port, viewer_port = free_port(), free_port()
    config["webrtc_ingest"] = {"port": port}
    config["viewer"] = {"port": viewer_port}  # a viewer tab watches one browser camera's annotated video
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "launcher.log"
    with log_path.open("w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "deploy", "run", "--config", str(config_path), "--duration", "240"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(config["sink"]["publish"])
    events: list[dict] = []

    def collect_until(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(events):
                return
            if sub.poll(200):
                events.append(json.loads(sub.recv_multipart()[1]))
        raise AssertionError(f"timed out waiting for {what}; log:\n{log_path.read_text()[-3000:]}")

    browser = None
    tabs = []
    try:
        base = f"http://127.0.0.1:{port}"
        poll(lambda: http_json(base + "/cameras"), 90, "the ingest page")
        browser = Chromium(Path(tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)), y4m)
        for camera in ("web0", "web1"):
            tabs.append(browser.open_tab(f"{base}/?camera={camera}"))
        for (_, devtools), camera in zip(tabs, ("web0", "web1"), strict=True):
            poll(lambda d=devtools: d.evaluate(STATE) == "connected",
                  60, f"{camera}'s browser to connect")  # fmt: skip
            assert devtools.evaluate("document.getElementById('camera').textContent") == camera

        def faces_on(camera: str, after: int = 0):
            return lambda evs: any(e["type"] == "faces" and e["camera"] == camera and e["faces"] for e in evs[after:])

        collect_until(lambda evs: faces_on("web0")(evs) and faces_on("web1")(evs), 120, "faces from both browsers")
        ups = {e["camera"] for e in events if e["type"] == "camera" and e["status"] == "up"}

        # The viewer, opened in another tab, plays web1's annotated video: the boxes of web1's events,
        # drawn in their emotion colors, are in the frames the browser decodes (previews of the
        # 640x360 webcam are full size: scale 1).
        _, viewer = tabs_viewer = browser.open_tab(f"http://127.0.0.1:{viewer_port}/")
        tabs.append(tabs_viewer)
        poll(lambda: viewer.evaluate("!!document.getElementById('cam-web1')"), 60, "web1 in the viewer's list")
        viewer.evaluate("document.getElementById('cam-web1').click(), true")
        poll(
            lambda: viewer.evaluate("(() => { const v = document.getElementById('video');"
                                    " return v.readyState >= 2 && v.videoWidth > 0 && !v.paused; })()"),
            60, "web1's annotated video to play in the viewer tab",
        )  # fmt: skip

        def box_seen() -> bool:
            image = grab_video(viewer)
            return any(outline_match(image, f, scale=1.0) > 0.7 for f in recent_faces(tmp_path, "web1"))

        poll(box_seen, 60, "a web1 event's box in its emotion color in the viewer's video", interval=0.3)

        # One browser goes away: its camera goes down, the other keeps delivering.
        browser.close_tab(tabs[0][0])
        tabs[0][1].close()
        mark = len(events)
        collect_until(
            lambda evs: any(e["type"] == "camera" and e["camera"] == "web0" and e["status"] == "down"
                            for e in evs[mark:]),
            60, "web0 to be reported down",
        )  # fmt: skip
        mark = len(events)
        collect_until(faces_on("web1", mark), 60, "more faces from web1 after web0 went down")
        assert not any(e["type"] == "camera" and e["camera"] == "web1" and e["status"] == "down" for e in events)
        # The slot is free again for the next browser.
        poll(lambda: not next(c for c in http_json(base + "/cameras")["cameras"] if c["id"] == "web0")["busy"],
              30, "web0's slot to be freed")  # fmt: skip
        assert ups <= {"web0", "web1"}
    finally:
        sub.close()
        for _, devtools in tabs[1:]:
            devtools.close()
        if browser is not None:
            browser.close()
        launcher.terminate()
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
    output = log_path.read_text()
    assert launcher.returncode == 0, output[-3000:]
    assert "started webrtc_ingest" in output
