"""Detector stage: real OpenCV detectors on real photos, and the worker process over real ZeroMQ."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq

from detector.backends import DetectorConfigError, HaarDetector, RolledPasses, YuNetDetector
from detector.crops import crop_squares, face_crops
from detector.detections import Detections
from detector.pipeline import FaceExtractor, build_extractor, detect_downscaled
from detector.settings import DetectorSettings
from emostream.wire import Frame, decode_credit, decode_faces, encode_frame
from support import REPO, SHARED, free_port, metric_samples, sample, start_stage, wait_for

MEDIA = SHARED / "media"
YUNET_MODEL = SHARED / "models" / "face_detection_yunet_2026may.onnx"
PORTRAITS = ["lena.jpg", "messi5.jpg", "grace_hopper.jpg"]


# ------------------------------------------------------------------------------------------------
# helpers (the cross-file ones live in conftest.py)
# ------------------------------------------------------------------------------------------------


def media_path(name: str) -> Path:
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"shared test media {path} is missing (expected next to the repo, see shared/media/SOURCE.md)")
    return path


def read_image(name: str) -> np.ndarray:
    image = cv2.imread(str(media_path(name)), cv2.IMREAD_COLOR)
    assert image is not None, f"OpenCV cannot read {name}"
    return image


def video_frame(index: int = 0) -> np.ndarray:
    cap = cv2.VideoCapture(str(media_path("faces.mp4")), cv2.CAP_FFMPEG)
    try:
        for _ in range(index + 1):
            ok, frame = cap.read()
            assert ok, f"faces.mp4 has no frame {index}"
    finally:
        cap.release()
    return frame


@pytest.fixture(scope="module")
def yunet_model() -> str:
    if not YUNET_MODEL.is_file():
        pytest.skip(f"YuNet model {YUNET_MODEL} is missing (see shared/models/SOURCE.md)")
    return str(YUNET_MODEL)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


# ------------------------------------------------------------------------------------------------
# backends
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PORTRAITS)
def test_haar_finds_exactly_one_face_in_each_portrait(name: str) -> None:
    # min_size 24 (Haar's own window): messi5's face is only ~40 px wide.
    found = HaarDetector(scale_factor=1.2, min_neighbors=5, min_size=24).detect(read_image(name))
    assert found.boxes.shape == (1, 4) and found.boxes.dtype == np.int32
    assert found.scores.shape == (1,) and found.scores.dtype == np.float32
    assert found.landmarks is None  # Haar gives none


@pytest.mark.parametrize("name", PORTRAITS)
def test_yunet_finds_exactly_one_confident_face_in_each_portrait(name: str, yunet_model: str) -> None:
    found = YuNetDetector(yunet_model, score_threshold=0.7).detect(read_image(name))
    assert found.boxes.shape == (1, 4) and found.boxes.dtype == np.int32
    assert found.scores.dtype == np.float32 and 0.7 <= float(found.scores[0]) <= 1.0
    # Five landmarks inside the box: the eyes above the mouth corners, the right eye left on screen.
    (lm,) = found.landmarks
    x, y, w, h = found.boxes[0]
    assert ((lm[:, 0] >= x) & (lm[:, 0] <= x + w) & (lm[:, 1] >= y) & (lm[:, 1] <= y + h)).all()
    assert lm[0, 0] < lm[1, 0] and max(lm[0, 1], lm[1, 1]) < min(lm[3, 1], lm[4, 1])


def test_haar_and_yunet_agree_on_where_the_face_is(yunet_model: str) -> None:
    image = read_image("grace_hopper.jpg")
    (haar,) = HaarDetector().detect(image).boxes
    (yunet,) = YuNetDetector(yunet_model).detect(image).boxes
    # Same face: the crop squares built from either box overlap almost entirely (crops.py relies on it).
    assert iou(crop_squares(haar[None])[0], crop_squares(yunet[None])[0]) > 0.7


def test_both_backends_find_several_people_in_the_meeting_video(yunet_model: str) -> None:
    frame = video_frame(0)
    assert len(HaarDetector().detect(frame)) >= 2
    assert len(YuNetDetector(yunet_model).detect(frame)) >= 2


def test_yunet_adapts_to_each_new_frame_size(yunet_model: str) -> None:
    detector = YuNetDetector(yunet_model)
    for name in PORTRAITS:  # three different sizes through one instance
        assert len(detector.detect(read_image(name))) == 1


def test_yunet_with_a_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(DetectorConfigError, match="does not exist"):
        YuNetDetector(str(tmp_path / "nope.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx model" * 100)
    with pytest.raises(DetectorConfigError, match="cannot load"):
        YuNetDetector(str(garbage))


def test_an_image_without_faces_gives_empty_typed_arrays(yunet_model: str) -> None:
    blank = np.full((240, 320, 3), 90, dtype=np.uint8)
    for detector in (HaarDetector(), YuNetDetector(yunet_model)):
        found = detector.detect(blank)
        assert found.boxes.shape == (0, 4) and found.boxes.dtype == np.int32
        assert found.scores.shape == (0,) and found.scores.dtype == np.float32


# ------------------------------------------------------------------------------------------------
# downscaling
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["haar", "yunet"])
@pytest.mark.parametrize("name", ["lena.jpg", "grace_hopper.jpg"])
def test_downscaled_detection_maps_boxes_back_to_full_resolution(backend: str, name: str, yunet_model: str) -> None:
    image = read_image(name)
    detector = HaarDetector(min_size=24) if backend == "haar" else YuNetDetector(yunet_model)
    full_found, half_found = (
        detect_downscaled(detector.detect, image, 1.0),
        detect_downscaled(detector.detect, image, 0.5),
    )
    (full,), (half,) = full_found.boxes, half_found.boxes
    assert iou(full, half) > 0.75, (full, half)
    assert abs(int(half[2]) - int(full[2])) < 0.15 * full[2]
    if full_found.landmarks is not None:  # landmarks are mapped back to full resolution too
        assert np.abs(full_found.landmarks - half_found.landmarks).max() < 0.05 * full[2]


@pytest.mark.parametrize("downscale", [1.0, 0.5])
def test_min_face_is_in_full_resolution_pixels_whatever_the_downscale(downscale: float, yunet_model: str) -> None:
    # YuNet, because its boxes hug the face; Haar's minSize only bounds its search window, and a
    # larger window still fires around a smaller face (lena at minSize 100 px: a 218 px box).
    frame = Frame(camera="cam", seq=0, ts_capture=0.0, image=read_image("lena.jpg"))  # face ~150x210 px
    keep_all = build_extractor(DetectorSettings(model=yunet_model, min_face=180, downscale=downscale))
    assert len(keep_all.process(frame)) == 1
    too_small = build_extractor(DetectorSettings(model=yunet_model, min_face=250, downscale=downscale))
    assert len(too_small.process(frame)) == 0


# ------------------------------------------------------------------------------------------------
# crops
# ------------------------------------------------------------------------------------------------


def test_crops_are_square_48px_grayscale_uint8_per_face() -> None:
    image = read_image("lena.jpg")
    boxes = HaarDetector().detect(image).boxes
    crops = face_crops(image, boxes, size=48)
    assert crops.shape == (len(boxes), 48, 48) and crops.dtype == np.uint8
    assert crops.std() > 10  # a real face, not a flat patch


def test_no_boxes_give_an_empty_crop_stack() -> None:
    crops = face_crops(np.zeros((100, 100, 3), np.uint8), np.zeros((0, 4), np.int32), size=48)
    assert crops.shape == (0, 48, 48) and crops.dtype == np.uint8


def test_crop_is_the_square_around_the_box_centre() -> None:
    gray = np.tile(np.arange(200, dtype=np.uint8), (200, 1))
    image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    # A tall 20x40 box (YuNet-like) becomes the 40x40 square with the same centre.
    (square,) = crop_squares(np.array([[60, 50, 20, 40]]))
    assert square.tolist() == [50, 50, 40, 40]
    crop = face_crops(image, np.array([[60, 50, 20, 40]]), size=40)[0]
    np.testing.assert_array_equal(crop, gray[50:90, 50:90])


def test_a_face_at_the_frame_edge_is_padded_and_stays_centred() -> None:
    gray = np.tile(np.arange(100, dtype=np.uint8), (100, 1)) + 50
    image = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    crop = face_crops(image, np.array([[-10, 20, 40, 40]]), size=40)[0]
    assert crop.shape == (40, 40)
    # The 10 columns left of the frame replicate the frame's edge column; the rest is the frame.
    np.testing.assert_array_equal(crop[:, :10], np.full((40, 10), 50, np.uint8))
    np.testing.assert_array_equal(crop[:, 10:], gray[20:60, 0:30])


def test_extractor_reports_boxes_inside_the_frame_with_full_res_crops(yunet_model: str) -> None:
    frame = Frame(camera="cam", seq=7, ts_capture=123.0, image=video_frame(0))
    faces = FaceExtractor(YuNetDetector(yunet_model), downscale=0.5, crop_size=48).process(frame)
    assert (faces.camera, faces.seq, faces.ts_capture, faces.frame_shape) == ("cam", 7, 123.0, (720, 1280))
    assert len(faces) >= 2 and faces.crops.shape == (len(faces), 48, 48)
    x, y, w, h = faces.boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= 1280).all() and (y + h <= 720).all()


def test_extractor_reports_unconfident_faces_only_when_their_landmarks_fit_a_frontal_face(yunet_model: str) -> None:
    from prometheus_client import REGISTRY

    # faces.mp4's first frame: two faces seen from the front (YuNet scores about 0.93) and the backs
    # of three heads (0.73-0.74) whose landmarks lie far from a frontal layout.
    image = video_frame(0)
    every = build_extractor(DetectorSettings(model=yunet_model, threads=1, max_landmark_misfit=10.0))
    default = build_extractor(DetectorSettings(model=yunet_model, threads=1))
    everything = every.extract(image, "misfit-off")[0]
    labels = {"camera": "misfit-on", "reason": "not_frontal"}
    before = REGISTRY.get_sample_value("emostream_faces_rejected_total", labels) or 0.0
    frontal = default.extract(image, "misfit-on")[0]
    assert len(frontal) == 2 and (frontal.scores >= 0.85).all()
    assert len(everything) >= 5 and (np.sort(everything.scores)[-2:] >= 0.85).all()
    assert REGISTRY.get_sample_value("emostream_faces_rejected_total", labels) == before + len(everything) - 2
    for box in frontal.boxes:
        assert max(iou(box, other) for other in everything.boxes) > 0.9
    # A camera with nothing rejected has the series at zero from its first key frame (dashboards see it).
    off = {"camera": "misfit-off", "reason": "not_frontal"}
    assert REGISTRY.get_sample_value("emostream_faces_rejected_total", off) == 0.0


class CountingDetector:
    """A real detector wrapped to count its calls (how often the extractor ran detection)."""

    def __init__(self, inner: HaarDetector) -> None:
        self.inner, self.min_size, self.calls = inner, inner.min_size, 0

    def detect(self, image_bgr: np.ndarray) -> Detections:
        self.calls += 1
        return self.inner.detect(image_bgr)


def test_extractor_spends_no_refinement_patch_on_a_face_the_landmark_check_will_reject(yunet_model: str) -> None:
    from prometheus_client import REGISTRY

    from detector.align import (
        REFINE_MIN_ROLL,
        REFINE_MISFIT_SLACK,
        frontal_faces,
        landmark_misfit,
        refine_landmarks,
        roll_degrees,
    )

    # faces.mp4's frame 8: three faces seen from the front, and two candidates under 0.85 whose landmarks
    # lie far from a frontal layout, one of them (the back of a head) tilted about 8 degrees.
    image = video_frame(8)
    settings = DetectorSettings(model=yunet_model, threads=1, roll_passes=())
    detector = CountingDetector(YuNetDetector(yunet_model, settings.score_threshold, min_size=10))
    found = detect_downscaled(detector.detect, image, settings.downscale)
    assert found.landmarks is not None
    doomed = (
        (found.scores < settings.confident_score)
        & (np.abs(roll_degrees(found.landmarks)) >= REFINE_MIN_ROLL)
        & (landmark_misfit(found.landmarks) > settings.max_landmark_misfit + REFINE_MISFIT_SLACK)
    )
    assert doomed.sum() == 1
    # Refining every tilted face first, then checking, as the extractor did before: the same faces.
    detector.calls = 0
    refined = refine_landmarks(image, found, detector)
    patches_before = detector.calls
    expected = frontal_faces(refined, settings.confident_score, settings.max_landmark_misfit)
    extractor = FaceExtractor(detector, downscale=settings.downscale, align=True)
    labels = {"camera": "frame8", "reason": "not_frontal"}
    detector.calls = 0
    reported = extractor.detect(image, "frame8")
    assert np.array_equal(reported.boxes, expected.boxes) and np.allclose(reported.landmarks, expected.landmarks)
    patches = detector.calls - 1  # the whole frame once, then the patches
    assert patches == patches_before - 1  # none for the back of the head
    assert REGISTRY.get_sample_value("emostream_faces_rejected_total", labels) == len(found) - len(reported)


def test_rolled_passes_run_on_one_key_frame_in_roll_every_and_the_faces_they_find_are_followed(
    yunet_model: str,
) -> None:
    lena = read_image("lena.jpg")
    height, width = lena.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), -45.0, 1.0)
    rolled = cv2.warpAffine(lena, turn, (width, height), borderMode=cv2.BORDER_REFLECT)
    blank = np.full_like(lena, 128)
    assert len(YuNetDetector(yunet_model).detect(rolled)) == 0, "the upright pass alone must miss this face"
    extractor = build_extractor(DetectorSettings(model=yunet_model, roll_every=4, threads=1))
    # This face needs the -30 pass, which runs on key frames 2, 6, 10... (the +30 one on 4, 8...).
    # Frame 1: upright only, nothing held to follow, so a face that comes in rolled waits for frame 2;
    # from there it is followed on a patch.
    found = [extractor.extract(image, "cam")[0] for image in (blank, rolled, rolled, rolled, rolled, rolled)]
    assert [len(f) for f in found] == [0, 0, 1, 1, 1, 1]
    for followed in found[3:]:
        assert followed.landmarks is not None
        assert iou(followed.boxes[0], found[2].boxes[0]) > 0.6
        np.testing.assert_allclose(followed.landmarks, found[2].landmarks, atol=6.0)
    # Another camera keeps a schedule of its own: its first key frame runs every rolled pass.
    assert len(extractor.extract(rolled, "other")[0]) == 1
    # The face leaves: frame 6 (the -30 pass) finds nothing, so frames 7-9 have nothing to follow and
    # no -30 pass; frame 10 has it again.
    assert [len(extractor.extract(image, "cam")[0]) for image in (blank, rolled, rolled, rolled, rolled)] == [
        0,
        0,
        0,
        0,
        1,
    ]
    # A forgotten camera starts again: its next key frame is a first one.
    extractor.forget("cam")
    assert len(extractor.extract(rolled, "cam")[0]) == 1


def test_turned_passes_are_spread_over_roll_every_key_frames_all_on_a_cameras_first() -> None:
    extractor = FaceExtractor(RolledPasses(HaarDetector(), angles=(30.0, -30.0)), roll_every=4)
    assert [extractor.turned_angles(k) for k in range(9)] == [
        (30.0, -30.0),
        (),
        (-30.0,),
        (),
        (30.0,),
        (),
        (-30.0,),
        (),
        (30.0,),
    ]
    three = FaceExtractor(RolledPasses(HaarDetector(), angles=(15.0, 30.0, 45.0)), roll_every=3)
    assert [three.turned_angles(k) for k in range(1, 7)] == [(30.0,), (45.0,), (15.0,), (30.0,), (45.0,), (15.0,)]
    assert FaceExtractor(HaarDetector()).turned_angles(0) == ()


def test_roll_every_1_runs_the_rolled_passes_on_every_key_frame(yunet_model: str) -> None:
    lena = read_image("lena.jpg")
    height, width = lena.shape[:2]
    rolled = cv2.warpAffine(
        lena,
        cv2.getRotationMatrix2D((width / 2, height / 2), -45.0, 1.0),
        (width, height),
        borderMode=cv2.BORDER_REFLECT,
    )
    extractor = build_extractor(DetectorSettings(model=yunet_model, roll_every=1, threads=1))
    assert [len(extractor.extract(image, "cam")[0]) for image in (np.full_like(lena, 128), rolled)] == [0, 1]


def test_non_key_frames_reuse_the_key_frames_boxes_with_crops_from_the_new_frame() -> None:
    detector = CountingDetector(HaarDetector())
    extractor = FaceExtractor(detector)
    lena = read_image("lena.jpg")
    key = extractor.process(Frame(camera="cam", seq=0, ts_capture=1.0, image=lena))
    assert len(key) == 1 and detector.calls == 1
    # The next frames are darker copies: same place, other pixels. Tracked, not detected again.
    darker = (lena // 2).astype(np.uint8)
    tracked = extractor.process(Frame(camera="cam", seq=1, ts_capture=1.04, image=darker, key=False))
    assert detector.calls == 1
    np.testing.assert_array_equal(tracked.boxes, key.boxes)
    assert tracked.crops.mean() < 0.6 * key.crops.mean(), "crops must come from the new frame"
    # Another camera's non-key frame has no key frame here (e.g. after a restart): detect anyway.
    other = extractor.process(Frame(camera="other", seq=5, ts_capture=1.0, image=lena, key=False))
    assert detector.calls == 2 and len(other) == 1
    # A key frame always detects, even for a camera with tracks.
    extractor.process(Frame(camera="cam", seq=3, ts_capture=1.1, image=np.zeros_like(lena)))
    assert detector.calls == 3
    empty = extractor.process(Frame(camera="cam", seq=4, ts_capture=1.2, image=lena, key=False))
    assert len(empty) == 0, "the tracks are the last key frame's: no face there"


# ------------------------------------------------------------------------------------------------
# the worker process
# ------------------------------------------------------------------------------------------------


def start_detector(*args: str) -> subprocess.Popen:
    return start_stage("detector", *args)


def frame_message(camera: str, seq: int, image: np.ndarray) -> list:
    return encode_frame(Frame(camera=camera, seq=seq, ts_capture=time.time(), image=image))


def malformed_messages() -> dict[str, list[bytes]]:
    """One broken message per WireError reason the worker must survive."""
    good = frame_message("cam-a", 99, np.zeros((4, 4, 3), np.uint8))
    header = json.loads(bytes(good[1]))
    return {
        "bad_parts": [b"just one part"],
        "wrong_topic": [b"faces", bytes(good[1]), bytes(good[2])],
        "bad_header": [b"frame", b"{this is not json", b""],
        "bad_payload": [b"frame", json.dumps({**header, "shape": [8, 8, 3]}).encode(), bytes(good[2])],
        "bad_version": [b"frame", json.dumps({**header, "v": 999}).encode(), bytes(good[2])],
    }


@pytest.mark.timeout(90)
def test_detector_process_answers_every_frame_and_survives_malformed_messages(
    zmq_context: zmq.Context, processes: list[subprocess.Popen]
) -> None:
    # Two cameras (two ROUTER sockets the test binds, as capture processes would) and the classifier
    # side (a PULL the test binds); the worker connects to all of them.
    cameras = {}
    for camera in ("cam-a", "cam-b"):
        router = zmq_context.socket(zmq.ROUTER)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        cameras[camera] = (router, f"tcp://127.0.0.1:{port}")
    results = zmq_context.socket(zmq.PULL)
    results_port = results.bind_to_random_port("tcp://127.0.0.1")
    metrics_port = free_port()
    proc = start_detector(
        "--worker", "3",
        "--frames", cameras["cam-a"][1],
        "--frames", cameras["cam-b"][1],
        "--push", f"tcp://127.0.0.1:{results_port}",
        "--min-face", "24",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    processes.append(proc)

    real = {
        ("cam-a", 0): read_image("lena.jpg"),
        ("cam-a", 1): read_image("messi5.jpg"),
        ("cam-b", 0): read_image("grace_hopper.jpg"),
        ("cam-b", 1): np.full((120, 160, 3), 80, np.uint8),  # no face: must still be answered
        ("cam-a", 2): video_frame(0),
    }
    broken = malformed_messages()
    # The worker announces itself to each camera with a credit: its routing id addresses it.
    peers = {}
    for camera, (router, _) in cameras.items():
        assert router.poll(30_000), f"no credit from the worker on {camera}"
        peer, *parts = router.recv_multipart()
        credit = decode_credit(parts)
        assert (credit.done, credit.window, credit.interval) == (0, 1, 1)
        peers[camera] = peer

    def send(camera: str, parts: list) -> None:
        cameras[camera][0].send_multipart([peers[camera], *parts])

    send("cam-a", frame_message("cam-a", 0, real[("cam-a", 0)]))
    for parts in broken.values():  # all on cam-a, before its last real frames
        send("cam-a", parts)
    send("cam-b", frame_message("cam-b", 0, real[("cam-b", 0)]))
    send("cam-a", frame_message("cam-a", 1, real[("cam-a", 1)]))
    send("cam-b", frame_message("cam-b", 1, real[("cam-b", 1)]))
    send("cam-a", frame_message("cam-a", 2, real[("cam-a", 2)]))

    answered = {}
    while len(answered) < len(real):
        assert results.poll(30_000), f"no Faces for {sorted(set(real) - set(answered))}"
        faces = decode_faces(results.recv_multipart())
        answered[(faces.camera, faces.seq)] = faces
    assert set(answered) == set(real)
    for key in [("cam-a", 0), ("cam-a", 1), ("cam-b", 0)]:
        assert len(answered[key]) == 1, key
        assert answered[key].crops.shape == (1, 48, 48)
    assert len(answered[("cam-b", 1)]) == 0
    assert len(answered[("cam-a", 2)]) >= 2
    assert answered[("cam-a", 2)].frame_shape == (720, 1280)

    def dropped_by_reason() -> dict[str, float] | None:
        samples = metric_samples(metrics_port)
        counts = {
            reason: sample(samples, "emostream_frames_dropped_total", stage="detector", camera="unknown", reason=reason)
            for reason in broken
        }
        return counts if all(v is not None for v in counts.values()) else None

    counts = wait_for(dropped_by_reason, what="malformed messages in /metrics")
    assert counts == {reason: 1.0 for reason in broken}
    samples = metric_samples(metrics_port)
    assert sample(samples, "emostream_frames_total", stage="detector", camera="cam-a") == 3.0
    assert sample(samples, "emostream_frames_total", stage="detector", camera="cam-b") == 2.0
    assert sample(samples, "emostream_faces_total", camera="cam-b") == 1.0
    assert sample(samples, "emostream_stage_seconds_count", stage="detector") == 5.0
    assert proc.poll() is None, "the worker died of malformed input"

    def last_credit(camera: str):
        router = cameras[camera][0]
        credit = None
        while router.poll(0):
            credit = decode_credit(router.recv_multipart()[1:])
        return credit

    # Every message, malformed or not, is finished and reported so: the camera may send more.
    done = {"cam-a": 3 + len(broken), "cam-b": 2}
    for camera, count in done.items():
        credit = wait_for(lambda c=camera: last_credit(c), what=f"a credit on {camera}")
        while credit.done < count:
            credit = wait_for(lambda c=camera: last_credit(c), what=f"done={count} on {camera}")
        assert credit.done == count and credit.load == 0

    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr


def test_detector_process_with_a_missing_yunet_model_exits_2(processes: list[subprocess.Popen]) -> None:
    proc = start_detector(
        "--worker", "0",
        "--frames", f"tcp://127.0.0.1:{free_port()}",
        "--push", f"tcp://127.0.0.1:{free_port()}",
        "--backend", "yunet",
        "--model", str(REPO / "no-such-model.onnx"),
    )  # fmt: skip
    processes.append(proc)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "no-such-model.onnx" in stderr and "does not exist" in stderr
