"""Capture stage: real sources (files, the demo camera, HTTP), real processes, real ZeroMQ sockets."""

from __future__ import annotations

import functools
import http.server
import itertools
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from capture.sender import DropPolicy, FrameSender, default_drop_policy
from capture.settings import CameraSettings
from capture.sources import DemoSource, SourceError, SourceKind, VideoCaptureSource, classify_source
from capture.stream import CaptureConfig, FpsLimiter, FrameStream, Pacer, Pacing, parse_size
from detector.backends import HaarDetector
from emostream.wire import Frame, decode_frame
from support import SHARED, CreditingWorker, free_port, metric_samples, sample, start_stage, wait_for

MEDIA = SHARED / "media"
FACES_MP4 = MEDIA / "faces.mp4"
FACES_MP4_FRAMES = 241


# ------------------------------------------------------------------------------------------------
# helpers (the cross-file ones live in conftest.py)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces_mp4() -> str:
    if not FACES_MP4.is_file():
        pytest.skip(f"shared test media {FACES_MP4} is missing (expected next to the repo, see shared/media/SOURCE.md)")
    return str(FACES_MP4)


def write_numbered_clip(path: Path, frames: int, fps: float, size: tuple[int, int] = (64, 48)) -> str:
    """A small MJPG clip whose frame i is flat grey level 4*i, so a decoded frame tells its index."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "this OpenCV cannot write MJPG"
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 4 * i, dtype=np.uint8))
    writer.release()
    return str(path)


def frame_number(image: np.ndarray) -> int:
    return int(round(float(image.mean()) / 4))


@pytest.fixture(scope="module")
def clip_25fps_50(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_numbered_clip(tmp_path_factory.mktemp("clips") / "numbered25.avi", 50, 25.0)


def take(stream: FrameStream, count: int) -> list[Frame]:
    frames = list(itertools.islice(stream, count))
    stream.close()
    return frames


def start_capture(*args: str) -> subprocess.Popen:
    return start_stage("capture", *args)


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------


def test_source_strings_are_classified_by_kind() -> None:
    assert classify_source("demo") is SourceKind.DEMO
    assert classify_source("0") is SourceKind.DEVICE
    assert classify_source("rtsp://cam.local/stream") is SourceKind.URL
    assert classify_source("https://example.org/live.m3u8") is SourceKind.URL
    assert classify_source("videos/lobby.mp4") is SourceKind.FILE


def test_live_sources_drop_oldest_and_files_block_by_default() -> None:
    assert default_drop_policy(SourceKind.FILE) is DropPolicy.BLOCK
    for kind in (SourceKind.DEMO, SourceKind.DEVICE, SourceKind.URL):
        assert default_drop_policy(kind) is DropPolicy.DROP_OLDEST


def test_resize_argument_is_width_by_height() -> None:
    assert parse_size("640x480") == (640, 480)
    for bad in ("640", "640x", "x480", "-1x5", "640x480x3"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_fps_limiter_keeps_every_fifth_frame_of_a_25fps_timeline() -> None:
    limiter = FpsLimiter(5, source_fps=25)
    kept = [i for i in range(50) if limiter.accept(i / 25)]
    assert kept == list(range(0, 50, 5))


def test_fps_limiter_halves_a_jittery_30fps_camera_without_undershooting() -> None:
    limiter = FpsLimiter(15, source_fps=30)
    jitter = [0.004, -0.003, 0.002, -0.004, 0.0, 0.003]
    times = [i / 30 + jitter[i % len(jitter)] for i in range(300)]  # 10 s of a jittery camera
    kept = sum(limiter.accept(t) for t in times)
    assert 145 <= kept <= 151


def test_fps_limiter_without_a_known_source_rate_still_caps_the_rate() -> None:
    limiter = FpsLimiter(10)
    kept = sum(limiter.accept(i / 100) for i in range(1000))  # 10 s at 100 fps
    assert 99 <= kept <= 101


# ------------------------------------------------------------------------------------------------
# file source
# ------------------------------------------------------------------------------------------------


def test_file_source_reads_every_frame_of_faces_mp4(faces_mp4: str) -> None:
    frames = list(FrameStream(CaptureConfig(camera="cam", source=faces_mp4, pacing=Pacing.FAST)))
    assert len(frames) == FACES_MP4_FRAMES
    assert all(f.image.shape == (720, 1280, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [f.seq for f in frames] == list(range(FACES_MP4_FRAMES))
    assert all(a.ts_capture <= b.ts_capture for a, b in itertools.pairwise(frames))
    assert all(f.camera == "cam" for f in frames)


def test_looping_file_restarts_from_its_first_frame(clip_25fps_50: str) -> None:
    stream = FrameStream(CaptureConfig(camera="cam", source=clip_25fps_50, loop=True, pacing=Pacing.FAST))
    frames = take(stream, 120)
    assert [frame_number(f.image) for f in frames] == [*range(50), *range(50), *range(20)]
    assert [f.seq for f in frames] == list(range(120))  # seq keeps counting across loops


def test_a_file_started_seconds_in_begins_there_and_its_later_passes_start_at_its_first_frame(
    clip_25fps_50: str,
) -> None:
    config = CaptureConfig(camera="cam", source=clip_25fps_50, loop=True, start_s=1.2, pacing=Pacing.FAST)
    frames = take(FrameStream(config), 90)
    assert [frame_number(f.image) for f in frames] == [*range(30, 50), *range(50), *range(20)]
    assert [f.seq for f in frames] == list(range(90))


def test_a_start_inside_a_group_of_pictures_gives_the_frame_shown_then(faces_mp4: str) -> None:
    # H.264 seeks land on a key frame; the frames decoded from there to the start are not delivered.
    first = take(FrameStream(CaptureConfig(camera="cam", source=faces_mp4, start_s=5.0, pacing=Pacing.FAST)), 1)[0]
    cap = cv2.VideoCapture(faces_mp4, cv2.CAP_FFMPEG)
    for _ in range(125):  # 5.0 s at 25 fps
        cap.grab()
    ok, expected = cap.read()
    cap.release()
    assert ok and np.array_equal(first.image, expected)


def test_a_start_past_the_end_of_the_file_stops_the_camera_with_an_error_naming_both(clip_25fps_50: str) -> None:
    config = CaptureConfig(camera="cam", source=clip_25fps_50, start_s=2.5, pacing=Pacing.FAST)
    with pytest.raises(SourceError, match=r"start_s 2.5 is past the end of .*numbered25.avi.* \(2.00 s long\)"):
        take(FrameStream(config), 1)


def test_only_a_file_camera_accepts_a_start() -> None:
    assert CameraSettings(id="c", source="clip.mp4", start_s=3).start_s == 3.0
    for source in ("demo", "rtsp://camera.local/stream", 0):
        with pytest.raises(ValueError, match="start_s: only a video file can start 3 s in"):
            CameraSettings(id="c", source=source, start_s=3)
    with pytest.raises(ValueError, match="start_s"):
        CameraSettings(id="c", source="clip.mp4", start_s=-1)


def test_file_without_loop_ends_after_its_last_frame(clip_25fps_50: str) -> None:
    frames = list(FrameStream(CaptureConfig(camera="cam", source=clip_25fps_50, pacing=Pacing.FAST)))
    assert [frame_number(f.image) for f in frames] == list(range(50))


class FakeTime:
    """A clock and a stop event whose wait() advances the clock instead of sleeping."""

    def __init__(self) -> None:
        self.now = 50.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False

    def is_set(self) -> bool:
        return False


def test_fast_pacing_delivers_every_frame_of_a_slow_file(tmp_path: Path) -> None:
    clip = write_numbered_clip(tmp_path / "slow.avi", 10, fps=1.0)
    frames = list(FrameStream(CaptureConfig(camera="cam", source=clip, pacing=Pacing.FAST)))
    assert [frame_number(f.image) for f in frames] == list(range(10))


def test_realtime_pacer_waits_until_each_frame_is_due_on_the_file_timeline() -> None:
    fake = FakeTime()
    pacer = Pacer(20.0, clock=fake)
    for index in range(6):
        assert pacer.wait(index, fake)
        fake.now += 0.01  # decoding and sending the frame takes 10 ms
    assert fake.waits == pytest.approx([0.04] * 5)


def test_realtime_pacer_rebases_instead_of_rushing_after_a_long_stall() -> None:
    fake = FakeTime()
    pacer = Pacer(10.0, clock=fake)
    assert pacer.wait(0, fake)
    fake.now += 5.0  # the downstream blocked us for 5 s
    assert pacer.wait(1, fake) and pacer.wait(2, fake)
    assert fake.waits == pytest.approx([0.1]), "after the stall frames are paced again, not burst"


def test_resize_delivers_frames_of_the_requested_size(faces_mp4: str) -> None:
    config = CaptureConfig(camera="cam", source=faces_mp4, pacing=Pacing.FAST, resize=(320, 180))
    frames = take(FrameStream(config), 3)
    assert [f.image.shape for f in frames] == [(180, 320, 3)] * 3


def test_fps_limit_skips_frames_on_the_media_timeline(clip_25fps_50: str) -> None:
    config = CaptureConfig(camera="cam", source=clip_25fps_50, pacing=Pacing.FAST, max_fps=5)
    frames = list(FrameStream(config))
    assert [frame_number(f.image) for f in frames] == list(range(0, 50, 5))
    assert [f.seq for f in frames] == list(range(10))  # skipped frames leave no gap in seq


def test_a_file_that_does_not_exist_raises_a_source_error(tmp_path: Path) -> None:
    stream = FrameStream(CaptureConfig(camera="cam", source=str(tmp_path / "missing.mp4")))
    with pytest.raises(SourceError, match="does not exist"):
        next(iter(stream))


# ------------------------------------------------------------------------------------------------
# demo and URL sources
# ------------------------------------------------------------------------------------------------


def test_demo_camera_shows_a_face_haar_finds_on_most_frames() -> None:
    demo = DemoSource(fps=2.0)  # 2 fps: 24 frames sample 12 s of its pan/zoom/light animation
    demo.open()
    detector = HaarDetector(scale_factor=1.2, min_neighbors=5, min_size=40)
    frames = []
    for _ in range(24):
        assert demo.grab()
        frames.append(demo.retrieve())
    assert all(f is not None and f.shape == (480, 640, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[5]), "the demo camera does not move"
    found = sum(len(detector.detect(f)) == 1 for f in frames)
    assert found >= 0.8 * len(frames), f"one face on only {found} of {len(frames)} demo frames"


def test_demo_stream_keeps_delivering_at_a_default_15_fps() -> None:
    stream = FrameStream(CaptureConfig(camera="demo", source="demo", pacing=Pacing.FAST))
    frames = take(stream, 30)
    assert [f.seq for f in frames] == list(range(30))
    assert stream.source.fps == 15.0


@pytest.fixture
def http_media_server() -> Iterator[str]:
    """Serve the shared media directory over HTTP on 127.0.0.1 from a thread; yields the base URL."""
    if not FACES_MP4.is_file():
        pytest.skip(f"shared test media {FACES_MP4} is missing")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(MEDIA)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("threads", [1, 2])
def test_a_file_source_decodes_with_the_configured_number_of_ffmpeg_threads(faces_mp4: str, threads: int) -> None:
    source = VideoCaptureSource(faces_mp4, SourceKind.FILE, decode_threads=threads)
    source.open()
    try:
        assert source._cap.get(cv2.CAP_PROP_N_THREADS) == threads
        assert source.grab() and source.retrieve().shape == (720, 1280, 3)
    finally:
        source.close()


def test_url_source_reads_frames_over_http(http_media_server: str) -> None:
    url = f"{http_media_server}/faces.mp4"
    stream = FrameStream(CaptureConfig(camera="web", source=url, pacing=Pacing.FAST))
    frames = take(stream, 10)
    assert [f.seq for f in frames] == list(range(10))
    assert all(f.image.shape == (720, 1280, 3) for f in frames)
    assert stream.kind is SourceKind.URL
    assert not stream.source.self_paced  # a file over HTTP has a length: it is paced like a file


# ------------------------------------------------------------------------------------------------
# the sender's drop policies (in-process, real sockets)
# ------------------------------------------------------------------------------------------------


def test_drop_oldest_keeps_only_the_newest_pending_frame(zmq_context: zmq.Context) -> None:
    stop = threading.Event()
    port = free_port()
    sender = FrameSender(zmq_context, f"tcp://127.0.0.1:{port}", "cam", DropPolicy.DROP_OLDEST, stop)
    try:
        image = np.zeros((8, 8, 3), np.uint8)
        # No detector is connected, so the socket cannot take anything: each frame replaces the last.
        for seq in range(5):
            assert sender.submit(Frame(camera="cam", seq=seq, ts_capture=time.time(), image=image))
        assert sender.dropped == 4
        worker = CreditingWorker(zmq_context, f"tcp://127.0.0.1:{port}", window=4)
        frame = worker.receive(20_000)
        assert frame is not None, "the pending frame never arrived"
        assert frame.seq == 4
        assert worker.receive(200) is None
    finally:
        stop.set()
        sender.finish()


# ------------------------------------------------------------------------------------------------
# the capture process
# ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_capture_process_delivers_every_frame_of_a_file_in_order(
    faces_mp4: str, zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    port = free_port()
    worker = CreditingWorker(zmq_context, f"tcp://127.0.0.1:{port}", window=1)
    proc = start_capture(
        "--camera", "file-cam",
        "--source", faces_mp4,
        "--frames", f"tcp://127.0.0.1:{port}",
        "--pacing", "fast",
        "--resize", "320x180",
    )  # fmt: skip
    processes.append(proc)
    frames = []
    while len(frames) < FACES_MP4_FRAMES:
        frame = worker.receive(30_000)
        assert frame is not None, f"only {len(frames)} frames arrived"
        frames.append(frame)
        if len(frames) == 1:
            time.sleep(1.0)  # a stalled consumer: block mode must wait for it, not drop
        worker.finish()
    assert [f.seq for f in frames] == list(range(FACES_MP4_FRAMES))
    assert all(f.camera == "file-cam" and f.image.shape == (180, 320, 3) for f in frames)
    assert all(a.ts_capture <= b.ts_capture for a, b in itertools.pairwise(frames))
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "241 frames sent, 0 dropped" in stderr
    assert worker.receive(100) is None


@pytest.mark.timeout(90)
def test_capture_process_sends_each_frame_to_the_least_loaded_worker_that_has_room(
    faces_mp4: str, zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    # Three workers ask this camera for frames. "idle" finishes each frame at once; "stuck" takes
    # frames and never finishes them; "busy" reports 1,000 frames of other cameras' work. ZeroMQ's
    # PUSH would deal a third to each. Least-loaded dispatch with credits must give "stuck" at least
    # one frame (it joins idle and wins the tie against "idle") and never more than its window, "busy"
    # nothing while "idle" has room, and lose nothing (a file blocks). Whether "stuck" gets its second
    # frame depends on whether "idle" happens to hold an unreported frame at that moment: timing.
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    idle = CreditingWorker(zmq_context, endpoint, window=64, name="idle")
    proc = start_capture(
        "--camera", "lb-cam",
        "--source", faces_mp4,
        "--frames", endpoint,
        "--pacing", "fast",
        "--resize", "160x90",
    )  # fmt: skip
    processes.append(proc)
    got: dict[str, list[int]] = {"idle": [], "stuck": [], "busy": []}
    first = idle.receive(30_000, finish=True)
    assert first is not None, "no frame arrived"
    got["idle"].append(first.seq)
    # The others join once the camera surely knows "idle": the first frame reached it.
    stuck = CreditingWorker(zmq_context, endpoint, window=2, name="stuck")
    busy = CreditingWorker(zmq_context, endpoint, window=2, load=1000, name="busy")
    workers = {"idle": idle, "stuck": stuck, "busy": busy}
    # Wait on every socket at once: polling them in turn sat out the full timeout on an idle one.
    poller = zmq.Poller()
    for worker in workers.values():
        poller.register(worker.socket, zmq.POLLIN)
    while sum(map(len, got.values())) < FACES_MP4_FRAMES:
        progressed = False
        for name, worker in workers.items():
            frame = worker.receive(0, finish=name == "idle")
            if frame is not None:
                got[name].append(frame.seq)
                progressed = True
        if not progressed:
            assert poller.poll(30_000), f"stalled after {got}"
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert 1 <= len(got["stuck"]) <= 2, got["stuck"]
    assert got["busy"] == []
    assert sorted(got["idle"] + got["stuck"]) == list(range(FACES_MP4_FRAMES))


@pytest.mark.timeout(90)
def test_capture_process_sends_jpeg_frames_at_the_configured_fps(
    clip_25fps_50: str, zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    port = free_port()
    worker = CreditingWorker(zmq_context, f"tcp://127.0.0.1:{port}", window=64)  # room for the whole clip
    proc = start_capture(
        "--camera", "jpeg-cam",
        "--source", clip_25fps_50,
        "--frames", f"tcp://127.0.0.1:{port}",
        "--pacing", "fast",
        "--fps", "5",
        "--encoding", "jpeg",
        "--jpeg-quality", "90",
    )  # fmt: skip
    processes.append(proc)
    # The process may exit before we read: its close() lingers until the frames are in our queue.
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    frames = []
    while worker.socket.poll(1000):
        parts = worker.socket.recv_multipart()
        assert b'"encoding":"jpeg"' in parts[1]
        frames.append(decode_frame(parts))
    assert [f.seq for f in frames] == list(range(10))
    assert [frame_number(f.image) for f in frames] == list(range(0, 50, 5))


@pytest.mark.timeout(90)
def test_capture_process_drops_oldest_frames_when_nobody_reads(
    zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    port, metrics_port = free_port(), free_port()
    # A worker that takes one frame and never finishes it: the camera must not wait for it.
    worker = CreditingWorker(zmq_context, f"tcp://127.0.0.1:{port}", window=1)
    proc = start_capture(
        "--camera", "demo-cam",
        "--source", "demo",
        "--pacing", "fast",
        "--frames", f"tcp://127.0.0.1:{port}",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)

    def sent_and_dropped() -> bool:
        # Drops start before the worker's credit arrives (nothing can be sent), so wait for both: the
        # frame that went out, and drops after that.
        samples = metric_samples(metrics_port)
        labels = {"stage": "capture", "camera": "demo-cam"}
        dropped = sample(samples, "emostream_frames_dropped_total", reason="overload", **labels)
        sent = sample(samples, "emostream_frames_total", **labels)
        return bool(dropped and dropped > 0 and sent and sent >= 1)

    wait_for(sent_and_dropped, what="frames sent and overload drops in /metrics")
    samples = metric_samples(metrics_port)
    assert sample(samples, "emostream_camera_up", camera="demo-cam") == 1.0
    assert sample(samples, "emostream_frames_total", stage="capture", camera="demo-cam") == 1.0
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    # The worker asked for one frame and got exactly one: credits bound what a busy worker holds.
    assert worker.receive(100) is not None
    assert worker.receive(100) is None


def test_capture_process_exits_2_naming_a_start_past_the_end_of_its_file(
    clip_25fps_50: str, processes: list[subprocess.Popen]
) -> None:
    proc = start_capture(
        "--camera", "c", "--source", clip_25fps_50, "--start-s", "100", "--frames", f"tcp://127.0.0.1:{free_port()}"
    )
    processes.append(proc)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "start_s 100 is past the end of" in stderr and "numbered25.avi" in stderr


def test_capture_process_exits_2_when_the_file_cannot_be_opened(
    tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_bytes(b"this is not a video file\n" * 100)
    for source in (str(tmp_path / "missing.mp4"), str(not_a_video)):
        proc = start_capture("--camera", "c", "--source", source, "--frames", f"tcp://127.0.0.1:{free_port()}")
        processes.append(proc)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, stderr
        assert Path(source).name in stderr


def start_dead_camera(processes: list[subprocess.Popen], source: str) -> tuple[subprocess.Popen, int]:
    """A capture process for camera ``gone`` on a source that never opens, and its metrics port."""
    metrics_port = free_port()
    proc = start_capture(
        "--camera", "gone",
        "--source", source,
        "--frames", f"tcp://127.0.0.1:{free_port()}",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)
    return proc, metrics_port


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "dead_source",
    [
        pytest.param(lambda: f"http://127.0.0.1:{free_port()}/live.mjpg", id="url-nothing-listens"),
        # No camera device exists on the test machines; on one that has 99 of them, pick another.
        pytest.param(lambda: "99", id="camera-index-absent"),
    ],
)
def test_capture_process_survives_an_unreachable_live_source_and_reports_the_camera_down(
    processes: list[subprocess.Popen], dead_source: Callable[[], str]
) -> None:
    proc, metrics_port = start_dead_camera(processes, dead_source())

    def failures() -> float | None:
        samples = metric_samples(metrics_port)
        errors = sample(samples, "emostream_frames_dropped_total", stage="capture", camera="gone", reason="read_error")
        return errors if errors and sample(samples, "emostream_camera_up", camera="gone") == 0.0 else None

    wait_for(failures, what="read_error and camera_up 0 in /metrics")
    assert proc.poll() is None, "a failing live source must not end the process"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "retrying" in stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "dead_source",
    [
        pytest.param(lambda: f"rtsp://127.0.0.1:{free_port()}/stream1", id="rtsp-nothing-listens"),
        pytest.param(lambda: "99", id="camera-index-absent"),
    ],
)
def test_a_live_source_that_never_opens_logs_one_error_then_one_line_per_retry_without_library_noise(
    processes: list[subprocess.Popen], dead_source: Callable[[], str]
) -> None:
    proc, metrics_port = start_dead_camera(processes, dead_source())

    def attempts() -> float | None:
        samples = metric_samples(metrics_port)
        return sample(samples, "emostream_frames_dropped_total", stage="capture", camera="gone", reason="read_error")

    wait_for(lambda: (attempts() or 0) >= 4, timeout=60, what="4 failed attempts to open")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    lines = stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if " ERROR " in line]
    assert len(errors) == 1, f"one ERROR line for the outage, got:\n{stderr}"
    assert "retrying in 0.5 s" in lines[errors[0]]
    retries = [line for line in lines[errors[0] :] if "still down" in line]
    assert len(retries) >= 3 and all(" WARNING " in line for line in retries), stderr
    # OpenCV's "[ WARN:...]" and FFmpeg's "[tcp @ 0x...]" lines: only around the first attempt.
    library = [i for i, line in enumerate(lines) if line.startswith("[")]
    assert all(i < errors[0] for i in library), f"library messages after the first attempt:\n{stderr}"
