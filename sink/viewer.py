"""``python -m sink.viewer``: watch the cameras' annotated video in a browser, over WebRTC.

    python -m sink.viewer --preview tcp://127.0.0.1:5552 --events tcp://127.0.0.1:5560    # http://127.0.0.1:8080/
    python -m sink.viewer ... --host 0.0.0.0 --token SECRET      # open http://HOST:8080/?token=SECRET

The page lists the cameras; choosing one plays its annotated video (boxes, emotion label and confidence,
track id: :mod:`sink.annotate`) beside a bar chart of that camera's emotion distribution over the last
:data:`RECENT_S` seconds. Like the recorder it subscribes to every capture's PREVIEW stream
(``python -m capture --preview``; repeat ``--preview``) and to the sink's events, and joins them
(:class:`sink.record.FrameJoiner`): only frames the pipeline classified are shown.

HTTP (standard library asyncio, no framework): ``/`` the page (no external assets), ``/cameras`` and
``/stats?camera=ID`` (JSON), ``POST /offer`` WebRTC signalling without trickle ICE (the browser posts
its offer once ICE gathering is complete; the answer holds all the server's candidates). The server
sends one video track per connection whose frames are the chosen camera's latest annotated frame, at
the rate the previews arrive.

Access: bound to a loopback address (the default 127.0.0.1) anyone on this machine may watch, and the
media stays on loopback too (the server offers only 127.0.0.1 ICE candidates). Bound anywhere else it
refuses to start without ``--token`` (exit 2); with a token every request needs ``?token=T`` or the
header ``Authorization: Bearer T``, else 401.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from emostream.follow import follow_stdin
from emostream.runtime import EXIT_FATAL, add_common_args, start_process
from emostream.webrtc import HttpApp, HttpError, add_http_args, parse_offer, prepare_http, serve
from emostream.wire import CameraEvent, EmotionEvent, Event, Preview
from sink.annotate import EMOTION_COLORS, blur_faces, draw_event
from sink.record import FrameJoiner, RecorderService, _Camera, joiner_parser

log = logging.getLogger("viewer")
STAGE = "viewer"
EMOTIONS = list(EMOTION_COLORS)
#: The chart shows the faces of the last this many seconds.
RECENT_S = 10.0
#: Without a new frame, the track repeats the last one this often (keeps the stream alive).
REPEAT_S = 0.5
VIDEO_CLOCK = 90_000


@dataclass
class CameraView:
    frame: np.ndarray | None = None
    seq: int = -1
    frames: int = 0
    totals: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=deque)  # (monotonic time, emotion)
    status: str | None = None


class ViewerJoiner(FrameJoiner):
    """Keeps each camera's latest annotated frame and its emotion counts; thread-safe readers."""

    stage = STAGE

    def __init__(self, blur: bool = False, max_wait_s: float = 1.0) -> None:
        super().__init__(max_wait_s)
        self.blur = blur
        self.lock = threading.Lock()
        self.views: dict[str, CameraView] = {}

    def _view(self, name: str) -> CameraView:
        view = self.views.get(name)
        if view is None:
            view = self.views[name] = CameraView()
        return view

    def add_preview(self, preview: Preview, now: float) -> None:
        if self.follows(preview.camera):
            with self.lock:
                self._view(preview.camera)
        super().add_preview(preview, now)

    def _forget(self, cam: _Camera) -> None:
        super()._forget(cam)
        with self.lock:
            self.views.pop(cam.name, None)

    def add_event(self, event: Event) -> None:
        if not self.follows(event.camera):
            return
        now = time.monotonic()
        with self.lock:
            view = self._view(event.camera)
            if isinstance(event, CameraEvent):
                view.status = event.status
            elif isinstance(event, EmotionEvent):
                for face in event.faces:
                    view.totals[face.emotion] += 1
                    view.recent.append((now, face.emotion))
        super().add_event(event)

    def _joined(self, cam: _Camera, preview: Preview, event: EmotionEvent) -> None:
        image = preview.image.copy()
        if self.blur:
            blur_faces(image, event, preview.scale)
        draw_event(image, event, preview.scale)
        with self.lock:
            view = self._view(cam.name)
            view.frame, view.seq = image, preview.seq
            view.frames += 1

    def camera_list(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {"id": name, "frames": view.frames, "status": view.status} for name, view in sorted(self.views.items())
            ]

    def stats(self, camera: str) -> dict[str, Any] | None:
        now = time.monotonic()
        with self.lock:
            view = self.views.get(camera)
            if view is None:
                return None
            while view.recent and now - view.recent[0][0] > RECENT_S:
                view.recent.popleft()
            recent = Counter(emotion for _, emotion in view.recent)
            return {
                "camera": camera,
                "frames": view.frames,
                "status": view.status,
                "window_s": RECENT_S,
                "recent": {e: recent.get(e, 0) for e in EMOTIONS},
                "total": {e: view.totals.get(e, 0) for e in EMOTIONS},
            }

    def latest(self, camera: str) -> tuple[int, np.ndarray | None]:
        with self.lock:
            view = self.views.get(camera)
            return (view.seq, view.frame) if view is not None else (-1, None)


# ---------------------------------------------------------------------------------------------
# WebRTC
# ---------------------------------------------------------------------------------------------


def make_track(joiner: ViewerJoiner, camera: str):
    import av
    from aiortc import VideoStreamTrack

    class CameraTrack(VideoStreamTrack):
        """The camera's latest annotated frame each time a new one is there (the preview rate)."""

        def __init__(self) -> None:
            super().__init__()
            self._seq = -2
            # Not _start: that is VideoStreamTrack's own clock attribute (a float).
            self._first_at: float | None = None
            self._sent_at = 0.0

        async def recv(self):
            while True:
                seq, image = joiner.latest(camera)
                now = time.monotonic()
                if image is not None and seq != self._seq:
                    break
                if now - self._sent_at >= REPEAT_S and (image is not None or self._seq == -2):
                    break
                await asyncio.sleep(0.01)
            if image is None:
                image = np.zeros((360, 640, 3), np.uint8)  # nothing joined yet: black until the first frame
            if image.shape[0] % 2 or image.shape[1] % 2:
                image = cv2.resize(image, (image.shape[1] // 2 * 2, image.shape[0] // 2 * 2))
            self._seq, self._sent_at = seq, now
            if self._first_at is None:
                self._first_at = now
            frame = av.VideoFrame.from_ndarray(np.asarray(image, dtype=np.uint8), format="bgr24")
            frame.pts = int((now - self._first_at) * VIDEO_CLOCK)
            frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
            return frame

    return CameraTrack()


class Peers:
    def __init__(self) -> None:
        self.connections: set[Any] = set()

    async def answer(self, joiner: ViewerJoiner, offer: dict[str, Any]) -> dict[str, str]:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing outside is asked
        self.connections.add(pc)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            log.info("peer %s: %s", id(pc), pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                self.connections.discard(pc)
                await pc.close()

        pc.addTrack(make_track(joiner, offer["camera"]))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate: no trickle
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def close(self) -> None:
        for pc in list(self.connections):
            await pc.close()
        self.connections.clear()


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


class ViewerServer(HttpApp):
    def __init__(self, joiner: ViewerJoiner, token: str | None = None) -> None:
        super().__init__(token)
        self.joiner = joiner
        self.peers = Peers()

    async def close(self) -> None:
        await self.peers.close()

    async def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
        route = (method, path)
        if route == ("GET", "/"):
            return 200, "text/html; charset=utf-8", PAGE.encode()
        if route == ("GET", "/cameras"):
            return 200, "application/json", json.dumps({"cameras": self.joiner.camera_list()}).encode()
        if route == ("GET", "/stats"):
            stats = self.joiner.stats((query.get("camera") or [""])[0])
            if stats is None:
                raise HttpError(404, "no such camera")
            return 200, "application/json", json.dumps(stats).encode()
        if route == ("POST", "/offer"):
            offer = parse_offer(body)
            camera = offer.get("camera")
            if not isinstance(camera, str):
                raise HttpError(400, "bad offer: no camera")
            if self.joiner.stats(camera) is None:
                raise HttpError(404, "no such camera")
            answer = await self.peers.answer(self.joiner, offer)
            return 200, "application/json", json.dumps(answer).encode()
        if path in ("/", "/cameras", "/stats", "/offer"):
            raise HttpError(405, "method not allowed")
        raise HttpError(404, "not found")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>emostream viewer</title>
<style>
body{font-family:sans-serif;margin:0;display:flex;height:100vh;background:#111;color:#ddd}
#list{width:180px;padding:10px;border-right:1px solid #333}
#list button{display:block;width:100%;margin:4px 0;padding:6px;background:#222;color:#ddd;border:1px solid #444}
#list button.on{background:#2a4d7a}
#main{flex:1;display:flex;gap:16px;padding:10px;align-items:flex-start}
video{background:#000;max-width:70vw}
#state{font-size:12px;color:#888}
</style></head><body>
<div id="list"><b>Cameras</b><div id="cams"></div><p id="state">choose a camera</p></div>
<div id="main"><video id="video" autoplay playsinline muted width="640" height="360"></video>
<div><b id="title">emotions</b><br><canvas id="chart" width="320" height="240"></canvas></div></div>
<script>
const token = new URLSearchParams(location.search).get('token');
const EMOTIONS = %EMOTIONS%;
const COLORS = %COLORS%;
function url(path, params) {
  const q = new URLSearchParams(params || {});
  if (token) q.set('token', token);
  const s = q.toString();
  return s ? path + '?' + s : path;
}
let pc = null, current = null;
const state = document.getElementById('state');
async function loadCameras() {
  const r = await fetch(url('/cameras'));
  const data = await r.json();
  const box = document.getElementById('cams');
  for (const cam of data.cameras) {
    let b = document.getElementById('cam-' + cam.id);
    if (!b) {
      b = document.createElement('button');
      b.id = 'cam-' + cam.id;
      b.textContent = cam.id;
      b.onclick = () => choose(cam.id);
      box.appendChild(b);
    }
    b.title = cam.status || '';
  }
}
async function choose(id) {
  if (pc) { pc.close(); pc = null; }
  current = id;
  document.querySelectorAll('#cams button').forEach(b => b.classList.toggle('on', b.id === 'cam-' + id));
  document.getElementById('title').textContent = id + ': emotions, last %WINDOW% s';
  state.textContent = 'connecting';
  pc = new RTCPeerConnection({iceServers: []});
  const mine = pc;
  pc.addTransceiver('video', {direction: 'recvonly'});
  pc.ontrack = e => {
    document.getElementById('video').srcObject = e.streams[0] || new MediaStream([e.track]);
  };
  pc.onconnectionstatechange = () => { state.textContent = mine.connectionState; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => {
      if (mine.iceGatheringState === 'complete') resolve();
    });
  });
  const r = await fetch(url('/offer'), {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type, camera: id})});
  if (!r.ok) { state.textContent = 'offer refused: ' + r.status; return; }
  if (mine !== pc) return;
  await pc.setRemoteDescription(await r.json());
}
function draw(stats) {
  const c = document.getElementById('chart'), g = c.getContext('2d');
  g.clearRect(0, 0, c.width, c.height);
  const counts = EMOTIONS.map(e => stats.recent[e] || 0);
  const sum = counts.reduce((a, b) => a + b, 0) || 1;
  const rowH = c.height / EMOTIONS.length;
  EMOTIONS.forEach((e, i) => {
    const share = counts[i] / sum;
    g.fillStyle = COLORS[e];
    g.fillRect(80, i * rowH + 4, (c.width - 130) * share, rowH - 8);
    g.fillStyle = '#ddd';
    g.font = '13px sans-serif';
    g.fillText(e, 4, i * rowH + rowH / 2 + 4);
    g.fillText(Math.round(100 * share) + '%', c.width - 45, i * rowH + rowH / 2 + 4);
  });
}
async function tick() {
  try {
    await loadCameras();
    if (current) {
      const r = await fetch(url('/stats', {camera: current}));
      if (r.ok) draw(await r.json());
    }
  } catch (e) { state.textContent = 'viewer unreachable'; }
}
tick();
setInterval(tick, 1000);
</script></body></html>
"""
PAGE = (
    PAGE.replace("%EMOTIONS%", json.dumps(EMOTIONS))
    .replace("%COLORS%", json.dumps({e: f"#{r:02x}{g:02x}{b:02x}" for e, (b, g, r) in EMOTION_COLORS.items()}))
    .replace("%WINDOW%", f"{RECENT_S:g}")
)


def build_parser() -> argparse.ArgumentParser:
    parser = joiner_parser("python -m sink.viewer", __doc__, max_wait_s=1.0)
    add_http_args(parser, default_port=8080)
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not prepare_http("sink.viewer", args.host, args.token):
        return EXIT_FATAL
    stop = start_process("viewer", args)
    joiner = ViewerJoiner(args.blur_faces, args.max_wait)
    updates = follow_stdin(args.follow_stdin)
    service = RecorderService(joiner, args.preview, args.events, args.curve_keys, updates=updates)
    thread = threading.Thread(target=service.run, args=(stop,), name="zmq", daemon=True)
    thread.start()
    try:
        asyncio.run(serve(ViewerServer(joiner, args.token), args.host, args.port, stop, "viewer"))
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        stop.set()
        return EXIT_FATAL
    finally:
        stop.set()
        thread.join(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
