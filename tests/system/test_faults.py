"""Faults injected into real processes under the launcher: SIGKILL, a frozen stage, SIGTERM.

Each test injects one fault into a running pipeline (the demo camera, real stage processes, real
sockets) and checks what the service promises: the fault is counted and logged, events resume, the
other stages keep running, and what was classified reaches the JSON Lines file.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import pytest
import zmq

from deploy.bench.procstats import rss_mb
from emostream.runtime import pid_alive, proc_stat_fields
from emostream.wire import EMOTIONS, EmotionEvent, FaceEmotion, decode_event, encode_event
from support import REPO, free_port, free_ports, metric_value, scrape, shared_path, wait_for
from support.pipeline import Pipeline, pipeline_config

STAGES = ("capture-demo", "detector-0", "classifier", "sink")


def demo_pipeline_with(tmp_path, cameras: list[dict], **sections) -> Pipeline:
    return Pipeline(pipeline_config(cameras, tmp_path, **sections), tmp_path)


def demo_pipeline(tmp_path, **sections) -> Pipeline:
    return demo_pipeline_with(tmp_path, [{"id": "demo", "source": "demo", "fps": 10}], **sections)


def YUNET() -> str:  # noqa: N802 - reads like the constant it stands for
    return str(shared_path("models", "face_detection_yunet_2026may.onnx"))


def events_after(pipe: Pipeline, since: float, timeout: float = 60) -> list[dict]:
    """Events captured after ``since`` (a Unix time), waiting up to ``timeout`` for the first."""
    return [
        e for e in pipe.collect(timeout, lambda ev: any(e["ts_capture"] > since for e in ev)) if e["ts_capture"] > since
    ]


# ------------------------------------------------------------------------------------------------
# faults in the real pipeline
# ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_every_stage_killed_with_sigkill_is_restarted_and_events_resume_while_the_others_run(tmp_path):
    pipe = demo_pipeline(tmp_path, supervisor={"restart_backoff_s": 0.5})
    resumed_after: dict[str, float] = {}
    try:
        assert pipe.collect(90, lambda ev: any(e["faces"] for e in ev)), f"no events\n{pipe.log_text()}"
        for stage in STAGES:
            pids = {s: pipe.pid_of(s) for s in STAGES}
            killed_at = time.time()
            os.kill(pids[stage], signal.SIGKILL)
            wait_for(lambda s=stage, p=pids[stage]: pipe.pid_of(s) != p, timeout=30, what=f"{stage} restart")
            after = events_after(pipe, killed_at)
            assert after, f"events did not resume after killing {stage}\n{pipe.log_text()[-3000:]}"
            resumed_after[stage] = min(e["ts_event"] for e in after) - killed_at
            others = {s: pipe.pid_of(s) for s in STAGES if s != stage}
            assert others == {s: p for s, p in pids.items() if s != stage}, "only the killed stage restarts"
            assert all(pid_alive(p) for p in others.values())
            assert f"{stage} died (signal 9)" in pipe.log_text()
        launcher = scrape(pipe.metrics_base)
        for stage in STAGES:
            assert metric_value(launcher, "emostream_stage_restarts_total", stage=stage) == 1, stage
    finally:
        code = pipe.stop()
    assert code == 0, pipe.log_text()
    # Reported, not asserted (tests do not time things): the closing note quotes these.
    print("events resumed after SIGKILL, seconds:", {k: round(v, 2) for k, v in resumed_after.items()})


@pytest.mark.timeout(240)
def test_a_frozen_stage_is_found_by_its_heartbeat_killed_and_restarted(tmp_path):
    pipe = demo_pipeline(tmp_path, supervisor={"restart_backoff_s": 0.2, "hang_timeout_s": 3})
    try:
        assert pipe.collect(90, lambda ev: any(e["faces"] for e in ev)), f"no events\n{pipe.log_text()}"
        frozen = pipe.pid_of("detector-0")
        classifier = pipe.pid_of("classifier")
        os.kill(frozen, signal.SIGSTOP)  # hung, not dead: the process exists but does nothing
        stopped_at = time.time()
        wait_for(lambda: pipe.pid_of("detector-0") != frozen, timeout=60, what="the frozen detector replaced")
        assert not pid_alive(frozen), "the frozen process must be killed, not left behind"
        assert "detector-0 hung" in pipe.log_text()
        assert events_after(pipe, stopped_at), "events did not resume after the hang"
        assert pipe.pid_of("classifier") == classifier
        launcher = scrape(pipe.metrics_base)
        assert metric_value(launcher, "emostream_stage_hangs_total", stage="detector-0") == 1
        assert metric_value(launcher, "emostream_stage_hangs_total", stage="classifier") == 0
    finally:
        code = pipe.stop()
    assert code == 0, pipe.log_text()


@pytest.mark.timeout(180)
def test_sigterm_stops_every_stage_and_every_published_event_is_in_the_jsonl_file(tmp_path):
    pipe = demo_pipeline(tmp_path)
    try:
        seen = pipe.collect(90, lambda ev: sum(bool(e["faces"]) for e in ev) >= 20)
        assert len(seen) >= 20, f"too few events\n{pipe.log_text()}"
        pids = [pipe.pid_of(s) for s in STAGES]
    finally:
        code = pipe.stop()  # SIGTERM, as systemd or docker stop would send
    assert code == 0, pipe.log_text()
    assert not [p for p in pids if pid_alive(p)], "a stage outlived the launcher"
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]  # every line complete and parseable
    assert {(e["camera"], e["frame"]) for e in seen} <= {(e["camera"], e.get("frame")) for e in logged}
    assert "did not stop in time" not in pipe.log_text(), "every stage stopped on SIGTERM within the timeout"


def test_the_launcher_itself_killed_takes_no_stage_with_it_left_running(tmp_path):
    pipe = demo_pipeline(tmp_path)
    try:
        assert pipe.collect(90, lambda ev: bool(ev)), f"no events\n{pipe.log_text()}"
        pids = [pipe.pid_of(s) for s in STAGES]
        pipe.proc.send_signal(signal.SIGKILL)
        pipe.proc.wait(timeout=10)
        # PR_SET_PDEATHSIG: the kernel sends each stage SIGTERM when the launcher dies.
        try:
            wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=30, what="every stage gone")
        except AssertionError as exc:
            left = {stage: process_state(pid) for stage, pid in zip(STAGES, pids, strict=True) if pid_alive(pid)}
            raise AssertionError(f"{exc}; still running: {left}\n{pipe.log_text()}") from None
    finally:
        pipe.stop()
    assert sys.platform != "linux" or not any(pid_alive(p) for p in pids)


def process_state(pid: int) -> str:
    """A live process's state letter and kernel wait channel (what it is blocked in), for failure messages."""
    fields = proc_stat_fields(pid)
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
    except OSError:
        wchan = "?"
    return "gone" if fields is None else f"pid {pid} state {fields[0]} in {wchan}"


def live_rss_mb(pid: int) -> float:
    mb = rss_mb(pid)
    assert mb is not None, f"pid {pid} is gone"
    return mb


@pytest.mark.timeout(240)
def test_a_stalled_classifier_makes_live_cameras_drop_counted_frames_and_no_queue_grows(tmp_path):
    # The classifier stops taking faces for 8 s (SIGSTOP, then SIGCONT): a slow classifier at its worst.
    # Upstream the queues are bounded (once full, the detector stops asking the camera for frames and the
    # live camera drops its oldest, counted as overload), so memory does not grow. When the classifier
    # resumes, what piled up is too old: dropped and counted as stale, not classified late.
    pipe = demo_pipeline(tmp_path, classifier={"max_age_ms": 1000})
    try:
        assert pipe.collect(90, lambda ev: sum(bool(e["faces"]) for e in ev) >= 10), pipe.log_text()
        classifier, detector, capture = (pipe.pid_of(s) for s in ("classifier", "detector-0", "capture-demo"))
        rss_before = {pid: live_rss_mb(pid) for pid in (detector, capture)}
        os.kill(classifier, signal.SIGSTOP)
        time.sleep(8)  # the fault's length, not a measurement
        rss_stalled = {pid: live_rss_mb(pid) for pid in (detector, capture)}
        os.kill(classifier, signal.SIGCONT)
        resumed_at = time.time()
        fresh = events_after(pipe, resumed_at)
        assert fresh, "events did not resume after the stall"
        base = pipe.metrics_base
        # Whether the live camera also had to drop (overload) depends on how much of the stall the
        # bounded queues absorb at this frame rate; what the classifier finds too old is always counted.
        stale = wait_for(
            lambda: metric_value(scrape(base + 2), "emostream_frames_dropped_total", reason="stale") or None,
            what="stale faces counted by the classifier",
        )
        assert stale > 0
        # Bounded queues: the stall did not make the upstream processes hold seconds of 640x480 frames.
        for pid, before in rss_before.items():
            assert rss_stalled[pid] < before + 50, f"pid {pid}: RSS {before:.0f} -> {rss_stalled[pid]:.0f} MB"
        assert pipe.pid_of("classifier") == classifier, "a stall is not a crash: no restart"
    finally:
        code = pipe.stop()
    assert code == 0, pipe.log_text()


class MjpegCamera:
    """An HTTP MJPEG camera (multipart/x-mixed-replace, as IP cameras serve it) from a thread; it can
    go away (server closed, connections cut) and come back on the same port."""

    def __init__(self, port: int, frames: list[bytes], fps: float = 10.0) -> None:
        self.port, self.frames, self.period = port, frames, 1.0 / fps
        self.server: http.server.ThreadingHTTPServer | None = None
        self.online = threading.Event()

    def start(self) -> None:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                while camera.online.is_set():
                    jpeg = camera.frames[i % len(camera.frames)]
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
                    try:
                        self.wfile.write(head + jpeg + b"\r\n")
                    except OSError:
                        return
                    i += 1
                    time.sleep(camera.period)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.online.set()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.online.clear()  # ends the streams being served
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def mjpeg_frames() -> list[bytes]:
    video = cv2.VideoCapture(str(shared_path("media", "faces.mp4")))
    frames = []
    for _ in range(25):
        ok, image = video.read()
        assert ok
        frames.append(cv2.imencode(".jpg", cv2.resize(image, (640, 360)))[1].tobytes())
    video.release()
    return frames


def logged_events(tmp_path) -> list[dict]:
    """What the sink wrote to its JSON Lines file: every event, in order, whenever one subscribes."""
    path = tmp_path / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def camera_statuses(tmp_path) -> list[str]:
    return [e["status"] for e in logged_events(tmp_path) if e["type"] == "camera"]


@pytest.mark.timeout(240)
def test_a_camera_that_goes_away_is_reported_down_then_up_on_the_event_stream_and_reconnected(tmp_path, mjpeg_frames):
    port = free_port()
    camera = MjpegCamera(port, mjpeg_frames)
    camera.start()
    source = {"id": "ipcam", "source": f"http://127.0.0.1:{port}/video.mjpg"}
    pipe = demo_pipeline_with(tmp_path, [source], detector={"backend": "yunet", "model": YUNET(), "min_face": 20})
    try:
        first = pipe.collect(90, lambda ev: any(e["faces"] for e in ev))
        assert any(e["faces"] for e in first), f"no faces from the MJPEG camera\n{pipe.log_text()[-3000:]}"
        assert camera_statuses(tmp_path) == ["up"]
        camera.stop()
        gone_at = time.time()
        wait_for(lambda: camera_statuses(tmp_path) == ["up", "down"], timeout=60, what="a camera down event")
        camera.start()
        wait_for(lambda: camera_statuses(tmp_path) == ["up", "down", "up"], timeout=90, what="a camera up event")
        wait_for(
            lambda: any(e["type"] == "faces" and e["ts_capture"] > gone_at for e in logged_events(tmp_path)),
            what="frames after reconnecting",
        )
        capture = scrape(pipe.metrics_base + 100)
        assert metric_value(capture, "emostream_frames_dropped_total", reason="read_error") >= 1
        assert metric_value(capture, "emostream_camera_up", camera="ipcam") == 1
        assert "retrying in" in pipe.log_text(), "reconnection with backoff is logged"
        launcher = scrape(pipe.metrics_base)
        assert metric_value(launcher, "emostream_stage_restarts_total", stage="capture-ipcam") == 0, (
            "a camera outage is handled inside the capture process, not by restarting it"
        )
    finally:
        code = pipe.stop()
        camera.stop()
    assert code == 0, pipe.log_text()
    down = next(e for e in logged_events(tmp_path) if e["type"] == "camera" and e["status"] == "down")
    assert down["camera"] == "ipcam" and down["reason"]


@pytest.mark.timeout(180)
def test_a_subscriber_that_does_not_read_costs_the_sink_bounded_memory_and_counts_what_it_missed(tmp_path):
    from sink.service import PUB_HWM
    from sink.subscribe import FrameGaps

    pull, publish, metrics_port = free_ports(3)
    sink = subprocess.Popen(
        [sys.executable, "-m", "sink", "--pull", f"tcp://127.0.0.1:{pull}", "--publish", f"tcp://127.0.0.1:{publish}"]
        + ["--metrics-port", str(metrics_port)],
        cwd=REPO,
    )
    try:
        wait_for(lambda: scrape(metrics_port), what="the sink's metrics")
        ctx = zmq.Context.instance()
        slow = ctx.socket(zmq.SUB)  # subscribes, then reads nothing while the events flow
        slow.setsockopt(zmq.SUBSCRIBE, b"")
        slow.setsockopt(zmq.RCVHWM, 100)
        slow.connect(f"tcp://127.0.0.1:{publish}")
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{pull}")
        probe = ctx.socket(zmq.SUB)
        probe.setsockopt(zmq.SUBSCRIBE, b"")
        probe.connect(f"tcp://127.0.0.1:{publish}")
        wait_for(
            lambda: (
                push.send_multipart(encode_event(EmotionEvent("cam", 0, time.time(), time.time()))) or probe.poll(200)
            ),
            what="the sink publishing to subscribers",
        )
        probe.close()
        time.sleep(0.5)  # the slow subscriber connected before the probe: its subscription is in place too
        rss_start = live_rss_mb(sink.pid)
        total = 4 * PUB_HWM
        padding = [FaceEmotion((0, 0, 48, 48), "happy", 0.9, {e: 1 / 7 for e in EMOTIONS})] * 4  # ~1 KB events
        for frame in range(1, total + 1):
            push.send_multipart(encode_event(EmotionEvent("cam", frame, time.time(), time.time(), padding)))
        wait_for(
            lambda: metric_value(scrape(metrics_port), "emostream_frames_total", stage="sink") >= total + 1,
            timeout=120,
            what="every event through the sink",
        )
        grown = live_rss_mb(sink.pid) - rss_start
        # Without a bound, 40,000 ~1 KB events queued for the slow subscriber would be ~40+ MB.
        assert grown < 30, f"the sink grew {grown:.0f} MB for one subscriber that does not read"
        gaps = FrameGaps()
        while slow.poll(2000):
            gaps.add(decode_event(slow.recv_multipart()))
        got = sum(gaps.seen.values())
        assert got < total, "the slow subscriber cannot have kept everything"
        # The next events after the subscriber caught up show the hole in the frame numbers. Some of the
        # backlog may still be in flight, and ZeroMQ reopens the sink's full pipe to this subscriber only
        # once it has seen it drained: new events are sent until one of them arrives.
        frame, newest = total, -1
        deadline = time.monotonic() + 30
        while newest <= total:
            assert time.monotonic() < deadline, "a subscriber that caught up receives events again"
            frame += 1
            push.send_multipart(encode_event(EmotionEvent("cam", frame, time.time(), time.time())))
            while slow.poll(200):
                event = decode_event(slow.recv_multipart())
                gaps.add(event)
                newest = max(newest, event.frame)
        received = sum(gaps.seen.values())
        assert gaps.missed("cam") == newest + 1 - received > 0, (newest, received, gaps.missed("cam"))
        assert sink.poll() is None
    finally:
        sink.terminate()
        sink.wait(timeout=30)


@pytest.mark.timeout(180)
def test_no_stage_writes_frames_to_disk_unless_configured(tmp_path):
    # Every stage runs with its working directory and TMPDIR inside tmp_path; afterwards the only file
    # a run may have left there besides the config and its log is the configured events file.
    work, scratch = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    config = pipeline_config([{"id": "demo", "source": "demo", "fps": 10}], work)
    config_path = work / "pipeline.yaml"
    config_path.write_text(json.dumps(config))
    before = set(work.rglob("*"))
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "deploy", "run", "--config", str(config_path), "--duration", "15"],
        cwd=work, env=env, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    events = work / "events.jsonl"
    assert events.exists() and any(json.loads(line).get("faces") for line in events.read_text().splitlines())
    created = {p for p in (set(work.rglob("*")) - before) | set(scratch.rglob("*")) if p.is_file()}
    # ONNX Runtime's telemetry library writes a session id (a timestamp and a UUID, ~50 bytes) to
    # $TMPDIR/.ses when it is imported: not a frame, and not ours to stop.
    session_ids = {p for p in created if p.name == ".ses" and p.stat().st_size < 100}
    assert created - session_ids == {events}, sorted(map(str, created))
