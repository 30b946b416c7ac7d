"""Bad input outside the wire (issue 7): broken video files, absurd sizes, broken model files and configs.

Each broken file is made here from the real media and model (truncated, overwritten with seeded
garbage, empty) and given to the real process, which must fail with one clear error naming the file
and exit code 2 (a problem no restart can fix), or, for a video that breaks mid-file, deliver what
decodes and end. Under the launcher, one broken camera must not stop the others. The malformed
*messages* are in tests/test_fuzz.py; a missing or non-video file and a non-model file are tested in
test_capture.py and test_classifier_sink.py.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
import zmq

from capture.stream import resize_frame
from classifier.model import SHIPPED_MODEL
from deploy.config import ConfigError, parse_config
from emostream.modelfile import INFO_FILE, ModelFileError, ModelInfo, load_model, save_model
from emostream.wire import (
    EMOTIONS,
    MAX_SIDE,
    Faces,
    Frame,
    WireError,
    decode_faces,
    decode_frame,
    encode_faces,
    encode_frame,
)
from support import (
    PYTHON,
    REPO,
    CreditingWorker,
    free_port,
    free_ports,
    http_get,
    metric_samples,
    sample,
    shared_path,
    start_stage,
    wait_for,
)
from support.pipeline import pipeline_config

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces_mp4() -> bytes:
    return shared_path("media", "faces.mp4").read_bytes()


def overwrite(data: bytes, start: int, end: int, seed: int) -> bytes:
    """``data`` with bytes [start, end) replaced by seeded garbage (the same garbage on every run)."""
    return data[:start] + random.Random(seed).randbytes(end - start) + data[end:]


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


def raw_frame_with_shape(shape: list[int]) -> list[bytes]:
    """A raw frame message whose header says ``shape`` and whose payload has exactly that many bytes,
    so only the shape check can refuse it (empty when the shape has a zero or a negative side)."""
    parts = [bytes(p) for p in encode_frame(Frame("cam", 0, 1.0, np.zeros((2, 2, 3), np.uint8)))]
    header = json.loads(parts[1])
    header["shape"] = shape
    nbytes = int(np.prod(shape)) if min(shape) > 0 else 0
    return [parts[0], json.dumps(header).encode(), bytes(nbytes)]


@pytest.mark.parametrize(
    "shape",
    [[0, 0, 3], [0, 64, 3], [64, 0, 3], [-1, 64, 3], [MAX_SIDE + 1, 1, 3], [1, MAX_SIDE + 1, 3], [1, 1, 0]],
    ids=str,
)
def test_frames_of_zero_or_absurd_size_are_bad_fields_even_when_the_payload_matches(shape: list[int]) -> None:
    with pytest.raises(WireError) as info:
        decode_frame(raw_frame_with_shape(shape))
    assert info.value.reason == "bad_field"


def test_the_largest_side_is_still_a_frame() -> None:
    assert decode_frame(raw_frame_with_shape([MAX_SIDE, 1, 3])).image.shape == (MAX_SIDE, 1, 3)
    assert decode_frame(raw_frame_with_shape([1, MAX_SIDE, 3])).image.shape == (1, MAX_SIDE, 3)


@pytest.mark.parametrize("frame_shape", [[0, 640], [480, 0], [MAX_SIDE + 1, 640], [480, MAX_SIDE + 1]], ids=str)
def test_faces_from_a_frame_of_zero_or_absurd_size_are_bad_fields(frame_shape: list[int]) -> None:
    faces = Faces("cam", 0, 1.0, 1.0, (480, 640), np.zeros((0, 4), np.int32), np.zeros(0), np.zeros((0, 48, 48)))
    parts = [bytes(p) for p in encode_faces(faces)]
    header = json.loads(parts[1])
    header["frame_shape"] = frame_shape
    with pytest.raises(WireError) as info:
        decode_faces([parts[0], json.dumps(header).encode(), parts[2]])
    assert info.value.reason == "bad_field"


# ------------------------------------------------------------------------------------------------
# broken model files
# ------------------------------------------------------------------------------------------------


def run_classifier(model: Path) -> subprocess.CompletedProcess:
    """``python -m classifier --model MODEL`` on CPU, until it exits (a bad model: at once)."""
    a, b = free_ports(2)
    return subprocess.run(
        [PYTHON, "-m", "classifier", "--pull", f"tcp://127.0.0.1:{a}", "--push", f"tcp://127.0.0.1:{b}",
         "--model", str(model), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_classifier_refuses_a_truncated_real_model_file_with_exit_2_naming_it(tmp_path: Path) -> None:
    truncated = tmp_path / "emotion.pt2"
    data = SHIPPED_MODEL.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = run_classifier(truncated)
    assert result.returncode == 2, result.stderr
    # torch logs its own traceback as a warning first; the last line is the classifier's verdict.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("classifier: ") and str(truncated) in last and "not an emostream model file" in last


def model_with_info(tiny_model: Path, info_text: str, path: Path) -> Path:
    """A real exported model (tiny_model's program) whose emostream.json is ``info_text``."""
    import torch

    program = torch.export.load(tiny_model)
    torch.export.save(program, path, extra_files={INFO_FILE: info_text})
    return path


GOOD_INFO = json.loads(ModelInfo(arch="tiny-test-cnn", class_names=list(EMOTIONS)).to_json())
BROKEN_INFO = {
    "not-json": "{this is not json",
    "not-an-object": "[1, 2, 3]",
    "missing-keys": json.dumps({"format": GOOD_INFO["format"]}),
    "wrong-types": json.dumps({**GOOD_INFO, "class_names": 7, "input_size": "big"}),
}


@pytest.mark.parametrize("case", sorted(BROKEN_INFO))
def test_a_model_file_with_broken_metadata_is_a_model_file_error(case: str, tiny_model: Path, tmp_path: Path) -> None:
    path = model_with_info(tiny_model, BROKEN_INFO[case], tmp_path / f"{case}.pt2")
    with pytest.raises(ModelFileError, match=re.escape(str(path))):
        load_model(path)


def test_classifier_refuses_a_model_file_with_broken_metadata_with_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    path = model_with_info(tiny_model, BROKEN_INFO["not-json"], tmp_path / "broken.pt2")
    result = run_classifier(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def tiny_model_file(path: Path, outputs: int, class_names: list[str]) -> Path:
    """An untrained model file with ``outputs`` scores per face named ``class_names``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, outputs))
    return save_model(net, ModelInfo(arch="tiny-test-cnn", class_names=class_names), path)


def test_a_model_whose_outputs_do_not_match_its_class_names_is_refused(tmp_path: Path) -> None:
    from classifier.model import EmotionModel

    # The event schema's seven names over two outputs: the names pass, the outputs do not.
    path = tiny_model_file(tmp_path / "m.pt2", 2, list(EMOTIONS))
    with pytest.raises(ModelFileError, match="2 outputs for 7 class names"):
        EmotionModel(path, device="cpu")


#: Seven classes, as the event schema, but other names or another order: every event would be refused.
OTHER_CLASS_NAMES = {
    "other-names": ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "contempt"],
    "other-order": sorted(EMOTIONS),
}


@pytest.mark.parametrize("case", sorted(OTHER_CLASS_NAMES))
def test_classifier_refuses_a_model_whose_classes_differ_from_the_event_schema_with_exit_2(
    case: str, tmp_path: Path
) -> None:
    names = OTHER_CLASS_NAMES[case]
    path = tiny_model_file(tmp_path / "m.pt2", len(names), names)
    assert load_model(path)[1].class_names == names  # a valid model file: only the classes are wrong
    result = run_classifier(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"classifier: {path}: the model's classes {names}") and "event schema" in lines[0]


# ------------------------------------------------------------------------------------------------
# configs the existing tests (test_config.py) do not cover
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([{"cameras": []}], "the top level must be a mapping"),
        (None, "the top level must be a mapping"),
        ("cameras", "the top level must be a mapping"),
        ({"cameras": 5}, "cameras"),
        ({"cameras": [{"id": "a", "source": "demo", "fps": float("nan")}]}, "cameras[0].fps"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"workers": float("inf")}}, "detector.workers"),
        ({"cameras": [{"id": "a", "source": ["demo"]}]}, "cameras[0].source"),
        ({"cameras": [{"id": "a", "source": "demo", "resize": [0, 0]}]}, "cameras[0].resize"),
        ({"cameras": [{"id": "a", "source": "demo", "resize": [100000, 10]}]}, "cameras[0].resize"),
    ],
    ids=["list", "empty-file", "scalar", "cameras-not-a-list", "nan-fps", "inf-workers", "source-a-list",
         "resize-zero", "resize-absurd"],
)  # fmt: skip
def test_a_config_of_the_wrong_shape_or_with_non_finite_numbers_names_the_problem(data: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "bad.yaml")
    assert f"bad.yaml: {key}" in str(info.value)


def test_an_infinite_camera_fps_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match=re.escape("bad.yaml: cameras[0].fps")):
        parse_config({"cameras": [{"id": "a", "source": "demo", "fps": float("inf")}]}, "bad.yaml")


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


# ------------------------------------------------------------------------------------------------
# the launcher with broken cameras
# ------------------------------------------------------------------------------------------------

RUN_S = 30  # the launcher's --duration: it stops by itself, the test reads its exit code


@pytest.mark.timeout(180)
def test_launcher_keeps_the_good_camera_running_and_reports_each_broken_camera_once_without_restarting_it(
    faces_mp4: bytes, tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(faces_mp4[:4096])
    garbled = tmp_path / "garbled-index.mp4"
    garbled.write_bytes(overwrite(faces_mp4, 40, 4000, seed=1))
    cameras = [
        {"id": "truncated", "source": str(truncated)},  # a finite file: restarted only on failure
        {"id": "garbled", "source": str(garbled), "loop": True},  # looping: restarted always, unless fatal
        {"id": "good", "source": "demo", "fps": 5},
    ]
    config = pipeline_config(cameras, tmp_path)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "launcher.log"
    with log_path.open("w") as log:
        launcher = subprocess.Popen(
            [PYTHON, "-m", "deploy", "run", "--config", str(config_path), "--duration", str(RUN_S)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    processes.append(launcher)
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(config["sink"]["publish"])
    fatal = [
        f"capture-{c} exited with a fatal error (exit code 2); not restarting it" for c in ("truncated", "garbled")
    ]
    failed_at: float | None = None
    launcher_samples: dict = {}
    events: list[dict] = []
    try:
        while launcher.poll() is None:
            if sub.poll(200):
                events.append(json.loads(sub.recv_multipart()[1]))
            if failed_at is None and all(line in log_path.read_text() for line in fatal):
                failed_at = time.time()
            if failed_at is not None and not launcher_samples:
                # Both cameras are down for good: the launcher still runs and exports what happened.
                launcher_samples = wait_for(lambda: metric_samples(config["metrics"]["base_port"]), what="launcher")
    finally:
        sub.close()
    text = log_path.read_text()
    assert launcher.returncode == 0, text[-3000:]
    assert f"duration of {RUN_S}s reached, stopping" in text, "the launcher ran to its end, not died early"
    assert failed_at is not None, text[-3000:]

    # Each broken camera: its own error names the file, the launcher reports it once and never restarts it.
    assert f"camera truncated: video file '{truncated}' yields no frames" in text
    assert f"camera garbled: OpenCV cannot open file source '{garbled}'" in text
    for camera in ("truncated", "garbled"):
        assert len(re.findall(rf"started capture-{camera} \(pid \d+\)", text)) == 1, f"capture-{camera} restarted"
        assert text.count(f"capture-{camera} exited with a fatal error") == 1
        assert sample(launcher_samples, "emostream_stage_restarts_total", stage=f"capture-{camera}") == 0.0
        assert sample(launcher_samples, "emostream_stage_up", stage=f"capture-{camera}") == 0.0
    assert sample(launcher_samples, "emostream_stage_up", stage="capture-good") == 1.0
    assert "Traceback" not in text

    # The good camera's events kept arriving after both broken cameras were gone; theirs never did (a
    # camera status event saying "down" would be fine).
    faces = [e for e in events if e["type"] == "faces"]
    after = [e for e in faces if e["ts_capture"] > failed_at]
    assert len(after) >= 5, f"{len(after)} events from the good camera after the failures\n{text[-3000:]}"
    assert {e["camera"] for e in faces} == {"good"}
    assert all(e.get("status") == "down" for e in events if e["camera"] != "good")


def test_launcher_stops_with_status_1_when_every_camera_failed_for_good(
    faces_mp4: bytes, tmp_path: Path, processes: list[subprocess.Popen]
) -> None:
    garbled = tmp_path / "garbled-index.mp4"
    garbled.write_bytes(overwrite(faces_mp4, 40, 4000, seed=1))
    # Looping, so only the fatal exit can end it: nothing is left to deliver frames.
    config = pipeline_config([{"id": "garbled", "source": str(garbled), "loop": True}], tmp_path)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    launcher = subprocess.run(
        [PYTHON, "-m", "deploy", "run", "--config", str(config_path), "--duration", "600"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launcher.returncode == 1, launcher.stdout[-3000:] + launcher.stderr[-3000:]
    assert "every camera failed for good (capture-garbled); stopping" in launcher.stdout + launcher.stderr
