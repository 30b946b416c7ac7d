"""The browser viewer (``python -m sink.viewer``) in a whole launcher run: its annotated video really plays
in headless Chromium over WebRTC."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import REPO, free_port
from support.browser import CHROMIUM, DevTools, grab_video, http_json, outline_match, poll, recent_faces
from support.pipeline import pipeline_config

# ---------------------------------------------------------------------------------------------
# The real thing: launcher + headless Chromium over the DevTools protocol
# ---------------------------------------------------------------------------------------------


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
            cameras = (http_json(base + "/cameras") or {}).get("cameras", [])
            return any(c["id"] == "demo" and c["frames"] > 0 for c in cameras)

        poll(demo_shown, 90, "the viewer to show annotated frames of the demo camera")
        browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1100,480",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = profile / "DevToolsActivePort"
        poll(lambda: active.exists() and active.read_text().strip(), 60, "Chromium's DevTools port")
        cdp_port = int(active.read_text().split()[0])
        pages = poll(
            lambda: [t for t in http_json(f"http://127.0.0.1:{cdp_port}/json/list") or [] if t["type"] == "page"],
            30, "a page target",
        )  # fmt: skip
        devtools = DevTools(pages[0]["webSocketDebuggerUrl"])
        devtools.call("Page.enable")
        devtools.call("Page.navigate", url=base + "/")
        poll(lambda: devtools.evaluate("!!document.getElementById('cam-demo')"), 30, "the camera list")
        devtools.evaluate("document.getElementById('cam-demo').click(), true")
        poll(
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
            image = grab_video(devtools)
            found = next((f for f in recent_faces(tmp_path) if outline_match(image, f) > 0.7), None)
            if found is None:
                time.sleep(0.3)
        assert found is not None, "no event's box was seen in its emotion color in the browser's video"

        stats = poll(
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
                image = grab_video(devtools)
                if any(outline_match(image, f) > 0.7 for f in recent_faces(tmp_path)):
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
