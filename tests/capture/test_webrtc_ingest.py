"""Webcams from browsers (``source: webrtc``, ``python -m capture.webrtc_ingest``): slot assignment,
the source kind, the plan, and a whole launcher run fed by two tabs of headless Chromium publishing a
fake webcam (a .y4m made from faces.mp4) over WebRTC; closing one tab takes its camera down."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import zmq

from capture.sources import SourceKind, WebRTCSource, classify_source, make_source
from capture.webrtc_ingest import Bridge, IngestServer, Slots, SlotsBusy
from emostream.webrtc import serve
from support import free_port
from support.browser import http_json, poll

# ---------------------------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------------------------


def test_slots_are_given_to_browsers_in_order_or_by_request_and_freed_when_they_go():
    slots = Slots({"web0": "tcp://a", "web1": "tcp://b"})
    first, second, third = object(), object(), object()
    assert slots.assign(first).camera == "web0"
    assert slots.assign(second).camera == "web1"
    with pytest.raises(SlotsBusy) as busy:
        slots.assign(third)
    assert busy.value.status == 503
    assert slots.release(first) == "web0"
    assert slots.release(first) is None  # twice: nothing more to free
    assert slots.assign(third).camera == "web0"  # the freed slot goes to the next browser
    with pytest.raises(SlotsBusy) as taken:
        slots.assign(object(), "web1")
    assert taken.value.status == 409
    with pytest.raises(SlotsBusy) as unknown:
        slots.assign(object(), "nope")
    assert unknown.value.status == 404
    slots.release(second)
    assert slots.assign(first, "web1").camera == "web1"
    assert [s["busy"] for s in slots.status()] == [True, True]


def test_webrtc_source_kind_and_bridge_deliver_frames_and_time_out():
    assert classify_source("webrtc") is SourceKind.WEBRTC
    assert classify_source("webrtc:tcp://127.0.0.1:1") is SourceKind.WEBRTC
    assert SourceKind.WEBRTC.is_live
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    slots = Slots({"web0": endpoint})
    bridge = Bridge(context, slots)
    source = make_source(f"webrtc:{endpoint}")
    assert isinstance(source, WebRTCSource) and source.self_paced
    source.read_timeout_s = 0.5
    try:
        source.open()
        image = np.arange(360 * 640 * 3, dtype=np.uint32).astype(np.uint8).reshape(360, 640, 3)
        deadline = time.monotonic() + 10
        while not bridge.send("web0", image) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert source.grab()
        assert np.array_equal(source.retrieve(), image)
        assert not source.grab()  # nothing more within the read timeout: the browser is gone
    finally:
        source.close()
        source._socket.close()
        bridge.close()
        context.term()


def test_plan_starts_the_ingest_with_bridges_after_the_frames_ports():
    from deploy.config import ConfigError, parse_config
    from deploy.plan import endpoints, metrics_ports, plan_stages

    cameras = [{"id": "cam", "source": "demo"}, {"id": "web0", "source": "webrtc"}, {"id": "web1", "source": "webrtc"}]
    config = parse_config({"cameras": cameras, "webrtc_ingest": {"port": 8123}, "viewer": {}})
    ends = endpoints(config)
    assert ends.bridges == {"web0": "tcp://127.0.0.1:5603", "web1": "tcp://127.0.0.1:5604"}
    used = [ends.faces, ends.events_in, *ends.frames.values(), *ends.previews.values(), *ends.bridges.values()]
    assert len(set(used)) == len(used)
    stages = {s.name: s for s in plan_stages(config)}
    ingest = stages["webrtc_ingest"]
    assert ingest.module == "capture.webrtc_ingest" and ingest.essential
    assert ingest.args[ingest.args.index("--port") + 1] == "8123"
    assert [ingest.args[i + 1] for i, a in enumerate(ingest.args) if a == "--camera"] == [
        "web0=tcp://127.0.0.1:5603",
        "web1=tcp://127.0.0.1:5604",
    ]
    capture = stages["capture-web1"].args
    assert capture[capture.index("--source") + 1] == "webrtc:tcp://127.0.0.1:5604"
    assert metrics_ports(config)["webrtc_ingest"] == 9105
    assert "webrtc_ingest" not in {s.name for s in plan_stages(parse_config({"cameras": cameras[:1]}))}
    with pytest.raises(ConfigError, match=r"webrtc_ingest: .*set webrtc_ingest.token"):
        parse_config({"cameras": cameras, "webrtc_ingest": {"host": "0.0.0.0"}})


def test_ingest_page_routes_and_token():
    slots = Slots({"web0": f"tcp://127.0.0.1:{free_port()}"})
    context = zmq.Context()
    bridge = Bridge(context, slots)
    port = free_port()
    stop = threading.Event()
    thread = threading.Thread(
        target=asyncio.run, args=(serve(IngestServer(slots, bridge, "tok"), "127.0.0.1", port, stop, "webrtc ingest"),)
    )
    thread.start()

    def get(path: str, data: bytes | None = None) -> int:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data), timeout=10
            ) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        poll(lambda: http_json(f"http://127.0.0.1:{port}/cameras?token=tok"), 10, "the ingest to listen", 0.05)
        assert get("/") == 401 and get("/cameras?token=bad") == 401
        assert get("/?token=tok") == 200 and get("/offer?token=tok") == 405 and get("/x?token=tok") == 404
        assert get("/offer?token=tok", b'{"type": "answer"}') == 400
    finally:
        stop.set()
        thread.join(10)
        bridge.close()
        context.term()
