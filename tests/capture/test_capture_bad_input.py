"""Bad input to the capture process: broken video files and absurd settings.

Each broken file is made here from the real media (truncated, overwritten with seeded garbage, empty)
and given to the real process, which must fail with one clear error naming the file and exit code 2
(a problem no restart can fix), or, for a video that breaks mid-file, deliver what decodes and end.
Under the launcher, one broken camera must not stop the others: tests/system/test_launcher_bad_cameras.py.
The malformed *messages* are in tests/emostream/test_wire_fuzz.py and tests/system/test_stage_fuzz.py.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from capture.stream import resize_frame
from emostream.wire import (
    MAX_SIDE,
)
from support import (
    PYTHON,
    REPO,
    CreditingWorker,
    free_port,
    free_ports,
    http_get,
    overwrite,
    shared_path,
    start_stage,
    wait_for,
)

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces_mp4() -> bytes:
    return shared_path("media", "faces.mp4").read_bytes()


def capture_errors(stderr: str) -> list[str]:
    """The ERROR lines the capture process logged (FFmpeg's own complaints are not log lines)."""
    return [line for line in stderr.splitlines() if " ERROR " in line]


def decode_all(path: Path, size: tuple[int, int]) -> list[np.ndarray]:
    """Every frame OpenCV decodes from ``path`` before it stops, resized as capture's --resize does."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return frames
            frames.append(resize_frame(image, size))
    finally:
        cap.release()


# ------------------------------------------------------------------------------------------------
# broken video files: python -m capture
# ------------------------------------------------------------------------------------------------

# How each file is made from faces.mp4 (whose index, the moov atom, sits in its first 4 KB), and what
# the one error line says. "yields no frames": the file opens but not one frame decodes.
BROKEN_VIDEOS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated-to-4KB": (lambda data: data[:4096], "yields no frames"),
    "truncated-to-1KB": (lambda data: data[:1024], "cannot open"),
    "garbage-over-the-index": (lambda data: overwrite(data, 40, 4000, seed=1), "cannot open"),
    "empty": (lambda data: b"", "cannot open"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(BROKEN_VIDEOS))
def test_capture_on_a_broken_video_file_exits_2_with_one_error_naming_the_file(
    case: str, faces_mp4: bytes, tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    make, message = BROKEN_VIDEOS[case]
    video = tmp_path / f"{case}.mp4"
    video.write_bytes(make(faces_mp4))
    proc = start_stage("capture", "--camera", "c", "--source", str(video), "--frames", f"tcp://127.0.0.1:{free_port()}")
    processes.append(proc)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    errors = capture_errors(stderr)
    assert len(errors) == 1, stderr
    assert str(video) in errors[0] and message in errors[0], errors[0]
    assert "Traceback" not in stderr


def test_capture_on_a_directory_named_like_a_video_exits_2_naming_it(
    tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    proc = start_stage(
        "capture", "--camera", "c", "--source", str(folder), "--frames", f"tcp://127.0.0.1:{free_port()}"
    )
    processes.append(proc)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    errors = capture_errors(stderr)
    assert len(errors) == 1 and str(folder) in errors[0], stderr


@pytest.mark.timeout(120)
def test_capture_delivers_every_frame_before_mid_file_corruption_in_order_then_ends_cleanly(
    faces_mp4: bytes, tmp_path: Path, zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    # The middle third overwritten: the index is intact, so the file opens and reports 241 frames, and
    # decoding stops at the first broken packet. Decided behaviour: like a video player (and FFmpeg)
    # on a damaged file, deliver what decodes, then end as at the end of the file (exit 0).
    video = tmp_path / "garbage-in-the-middle.mp4"
    third = len(faces_mp4) // 3
    video.write_bytes(overwrite(faces_mp4, third, 2 * third, seed=2))
    size = (160, 90)
    expected = decode_all(video, size)
    assert 0 < len(expected) < 241, "the garbage must break decoding mid-file"
    intact = tmp_path / "intact.mp4"
    intact.write_bytes(faces_mp4)
    original = decode_all(intact, size)[: len(expected)]

    port = free_port()
    worker = CreditingWorker(zmq_context, f"tcp://127.0.0.1:{port}", window=64)
    proc = start_stage(
        "capture", "--camera", "damaged", "--source", str(video), "--frames", f"tcp://127.0.0.1:{port}",
        "--pacing", "fast", "--resize", f"{size[0]}x{size[1]}",
    )  # fmt: skip
    processes.append(proc)
    frames = []
    while len(frames) < len(expected):
        frame = worker.receive(30_000, finish=True)
        assert frame is not None, f"only {len(frames)} of {len(expected)} frames arrived"
        frames.append(frame)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert worker.receive(500) is None, "nothing after the corruption"
    assert [f.seq for f in frames] == list(range(len(expected)))
    # The frames before the corruption arrive unchanged: the intact file's first frames.
    for got, want, before in zip(frames, expected, original, strict=True):
        np.testing.assert_array_equal(got.image, want)
        np.testing.assert_array_equal(got.image, before)
    assert f"end of file; {len(expected)} frames delivered" in stderr
    assert capture_errors(stderr) == [] and "Traceback" not in stderr


# ------------------------------------------------------------------------------------------------
# zero-size frames and absurd resolutions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", ["0x0", "100000x10", "10x100000", "640x0", f"{MAX_SIDE + 1}x480", "640x-480", "640*480", "wide"]
)
def test_capture_refuses_a_zero_or_absurd_resize_with_a_usage_error(size: str) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "capture", "--camera", "c", "--source", "demo", "--frames", "tcp://127.0.0.1:1",
         "--resize", size],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "usage: python -m capture" in result.stderr
    assert f"argument --resize: '{size}'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_capture_refuses_negative_decode_threads_with_a_usage_error() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "capture", "--camera", "c", "--source", "demo", "--frames", "tcp://127.0.0.1:1",
         "--decode-threads", "-1"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--decode-threads -1: must be 0" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_capture_refuses_an_infinite_fps_with_a_usage_error(processes: list[subprocess.Popen]) -> None:
    frames_port, metrics_port = free_ports(2)
    proc = start_stage(
        "capture", "--camera", "c", "--source", "demo", "--fps", "inf",
        "--frames", f"tcp://127.0.0.1:{frames_port}", "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)
    # A refusal exits at once; today the camera starts, so stop waiting once it is ready.
    wait_for(lambda: proc.poll() is not None or http_get(metrics_port, "/readyz")[0] == 200, what="exit or start")
    assert proc.poll() == 2
