"""``python -m capture.webrtc_ingest``: webcams from browsers, as cameras of the pipeline (source ``webrtc``).

    python -m capture.webrtc_ingest --port 8090 --camera web0=tcp://127.0.0.1:5602 --camera web1=tcp://127.0.0.1:5603

The launcher starts it when a camera has ``source: webrtc`` (each such camera is a *slot*). ``/`` serves
a page that asks for the webcam (``getUserMedia``) and publishes it over WebRTC (``POST /offer``, no
trickle ICE). Each new browser gets a free slot, or the one it asks for with ``/?camera=web1`` (409 if
that one is taken, 503 when all are). The browser's video is decoded here and every frame PUSHed as
``[header JSON, raw BGR]`` to its slot's bridge endpoint, where that camera's capture process
(:class:`capture.sources.WebRTCSource`) PULLs it: from there on the frames are like any camera's.

A browser that goes away (connection failed or closed, or no frame for
:data:`~capture.sources.WEBRTC_READ_TIMEOUT_S`) is cleaned up here: its peer connection and track task
are closed and its slot is freed for the next browser. Its capture process, which gets no more
frames, reports the camera ``down`` (event and ``emostream_camera_up`` 0, ``read_error`` counted) and
keeps polling; the next browser in that slot brings it ``up`` again.

Access: as ``sink.viewer`` -- on a loopback address (default 127.0.0.1) ICE is offered on 127.0.0.1
only; bound anywhere else it needs ``--token`` (exit 2 without). Browsers only allow the webcam on
``localhost`` or over HTTPS, so a remote browser needs an HTTPS proxy in front of this.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import zmq

from capture.sources import WEBRTC_READ_TIMEOUT_S
from emostream.runtime import EXIT_FATAL, add_common_args, start_process
from emostream.webrtc import HttpApp, HttpError, add_http_args, parse_offer, prepare_http, serve
from emostream.wire import camera_id_error

log = logging.getLogger("webrtc_ingest")
STAGE = "webrtc_ingest"


class SlotsBusy(Exception):
    """No slot for a browser: all taken (503) or the one it asked for is taken / unknown (409 / 404)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Slot:
    camera: str
    endpoint: str
    owner: Any = None  # the peer connection holding it, or None when free
    frames: int = 0


class Slots:
    """Which browser publishes as which camera. Not thread-safe: used from the event loop only."""

    def __init__(self, cameras: dict[str, str]) -> None:
        self.slots = {camera: Slot(camera, endpoint) for camera, endpoint in cameras.items()}

    def assign(self, owner: Any, wanted: str | None = None) -> Slot:
        if wanted:
            slot = self.slots.get(wanted)
            if slot is None:
                raise SlotsBusy(404, f"no webrtc camera {wanted!r} (there are: {', '.join(self.slots)})")
            if slot.owner is not None:
                raise SlotsBusy(409, f"camera {wanted!r} is already published by another browser")
        else:
            slot = next((s for s in self.slots.values() if s.owner is None), None)
            if slot is None:
                raise SlotsBusy(503, f"all {len(self.slots)} webrtc cameras are taken")
        slot.owner = owner
        return slot

    def release(self, owner: Any) -> str | None:
        """Free the slot ``owner`` holds (no-op when it holds none); its camera id."""
        for slot in self.slots.values():
            if slot.owner is owner:
                slot.owner = None
                return slot.camera
        return None

    def status(self) -> list[dict[str, Any]]:
        return [{"id": s.camera, "busy": s.owner is not None, "frames": s.frames} for s in self.slots.values()]


class Bridge:
    """One PUSH socket per slot, bound here; frames that cannot go at once are dropped (live source)."""

    def __init__(self, context: zmq.Context, slots: Slots) -> None:
        self.sockets: dict[str, zmq.Socket] = {}
        for slot in slots.slots.values():
            sock = context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 2)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(slot.endpoint)
            self.sockets[slot.camera] = sock

    def send(self, camera: str, image) -> bool:
        height, width = image.shape[:2]
        header = json.dumps({"width": width, "height": height, "ts": time.time()}).encode()
        try:
            self.sockets[camera].send_multipart([header, image.tobytes()], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


class IngestServer(HttpApp):
    def __init__(self, slots: Slots, bridge: Bridge, token: str | None = None) -> None:
        super().__init__(token)
        self.slots = slots
        self.bridge = bridge
        self.tasks: dict[Any, asyncio.Task] = {}

    async def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, str, bytes]:
        if (method, path) == ("GET", "/"):
            return 200, "text/html; charset=utf-8", PAGE.encode()
        if (method, path) == ("GET", "/cameras"):
            return 200, "application/json", json.dumps({"cameras": self.slots.status()}).encode()
        if (method, path) == ("POST", "/offer"):
            offer = parse_offer(body)
            wanted = offer.get("camera") or None
            if wanted is not None and not isinstance(wanted, str):
                raise HttpError(400, "bad offer: camera must be a string")
            answer = await self.answer(offer, wanted)
            return 200, "application/json", json.dumps(answer).encode()
        if path in ("/", "/cameras", "/offer"):
            raise HttpError(405, "method not allowed")
        raise HttpError(404, "not found")

    async def answer(self, offer: dict[str, Any], wanted: str | None) -> dict[str, str]:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: nothing outside is asked
        try:
            slot = self.slots.assign(pc, wanted)
        except SlotsBusy as exc:
            await pc.close()
            raise HttpError(exc.status, str(exc)) from None
        log.info("browser %s publishes camera %s", id(pc), slot.camera)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            log.info("camera %s: browser connection %s", slot.camera, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.drop(pc, "connection " + pc.connectionState)

        @pc.on("track")
        def _track(track) -> None:
            if track.kind == "video" and pc not in self.tasks:
                self.tasks[pc] = asyncio.ensure_future(self._pump(pc, slot, track))

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type=offer["type"]))
            await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate: no trickle
        except Exception:
            await self.drop(pc, "bad offer")
            raise
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "camera": slot.camera}

    async def _pump(self, pc: Any, slot: Slot, track) -> None:
        """Decode the browser's video into its slot's bridge until it stops."""
        from aiortc.mediastreams import MediaStreamError

        why = "track ended"
        try:
            while True:
                # The first frame may take a while (ICE, DTLS); after it, silence means the browser is gone.
                timeout = WEBRTC_READ_TIMEOUT_S if slot.frames else 30.0
                try:
                    frame = await asyncio.wait_for(track.recv(), timeout)
                except asyncio.TimeoutError:
                    why = f"no frame for {timeout:g} s"
                    break
                if slot.owner is not pc:
                    return
                self.bridge.send(slot.camera, frame.to_ndarray(format="bgr24"))
                slot.frames += 1
        except MediaStreamError:
            pass
        except asyncio.CancelledError:
            return
        self.tasks.pop(pc, None)
        await self.drop(pc, why)

    async def drop(self, pc: Any, why: str) -> None:
        """Clean up a browser: free its slot, stop its track task, close its peer connection."""
        camera = self.slots.release(pc)
        if camera is not None:
            log.info("camera %s: browser gone (%s); slot free", camera, why)
            for slot in self.slots.slots.values():
                if slot.camera == camera:
                    slot.frames = 0
        task = self.tasks.pop(pc, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        await pc.close()

    @property
    def connections(self) -> list[Any]:
        return [s.owner for s in self.slots.slots.values() if s.owner is not None]

    async def close(self) -> None:
        for pc in self.connections:
            await self.drop(pc, "shutting down")


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>emostream webcam</title>
<style>body{font-family:sans-serif;background:#111;color:#ddd;margin:20px}video{background:#000}</style>
</head><body>
<h3>emostream: publish this webcam</h3>
<video id="video" autoplay playsinline muted width="640" height="360"></video>
<p>camera: <b id="camera">-</b> &middot; state: <span id="state">asking for the webcam</span></p>
<script>
const params = new URLSearchParams(location.search);
const token = params.get('token');
const wanted = params.get('camera');
const state = document.getElementById('state');
let pc = null;
async function publish() {
  const stream = await navigator.mediaDevices.getUserMedia(
    {video: {width: {ideal: 640}, height: {ideal: 360}}, audio: false});
  document.getElementById('video').srcObject = stream;
  pc = new RTCPeerConnection({iceServers: []});
  for (const track of stream.getVideoTracks()) pc.addTrack(track, stream);
  pc.onconnectionstatechange = () => { state.textContent = pc.connectionState; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(resolve => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
  });
  const q = new URLSearchParams();
  if (token) q.set('token', token);
  const r = await fetch('/offer' + (q.toString() ? '?' + q : ''), {method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type, camera: wanted})});
  const answer = await r.json();
  if (!r.ok) { state.textContent = 'refused: ' + (answer.error || r.status); pc.close(); return; }
  document.getElementById('camera').textContent = answer.camera;
  await pc.setRemoteDescription({sdp: answer.sdp, type: answer.type});
}
publish().catch(e => { state.textContent = 'error: ' + e; });
</script></body></html>
"""


def _camera(text: str) -> tuple[str, str]:
    camera, sep, endpoint = text.partition("=")
    if not sep or not endpoint:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=ENDPOINT")
    problem = camera_id_error(camera)
    if problem:
        raise argparse.ArgumentTypeError(f"{camera!r}: {problem}")
    return camera, endpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m capture.webrtc_ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--camera",
        action="append",
        required=True,
        type=_camera,
        metavar="ID=ENDPOINT",
        help="a webrtc camera slot and the endpoint its capture process reads (repeat)",
    )
    add_http_args(parser, default_port=8090)
    add_common_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not prepare_http("capture.webrtc_ingest", args.host, args.token):
        return EXIT_FATAL
    stop = start_process(STAGE, args)
    slots = Slots(dict(args.camera))
    context = zmq.Context()
    try:
        bridge = Bridge(context, slots)
    except zmq.ZMQError as exc:
        log.error("cannot bind a bridge endpoint: %s", exc)
        context.term()
        return 1
    try:
        asyncio.run(serve(IngestServer(slots, bridge, args.token), args.host, args.port, stop, "webrtc ingest"))
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", args.host, args.port, exc.strerror or exc)
        return EXIT_FATAL
    finally:
        stop.set()
        bridge.close()
        context.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
