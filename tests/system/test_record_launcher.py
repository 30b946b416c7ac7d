"""A whole launcher run with ``recorder:`` writing a playable, annotated (and optionally blurred) video of
the demo camera. The pieces (previews, drawing, the recorder's join) are tests/sink/test_record.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from sink.annotate import EMOTION_COLORS
from support import REPO
from support.pipeline import pipeline_config

# ---------------------------------------------------------------------------------------------
# Through the launcher
# ---------------------------------------------------------------------------------------------

PREVIEW_SIZE = (640, 360)  # the demo camera resized to 960x540, previews at most 640 wide
SCALE = 640 / 960


def _read_video(path) -> list[np.ndarray]:
    video = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = video.read()
        if not ok:
            return frames
        frames.append(image)


def _outline_match(image: np.ndarray, face: dict) -> float:
    """Fraction of the (scaled) box's left edge whose pixels are the face's emotion color (MJPG tolerance)."""
    x, y, w, h = (round(v * SCALE) for v in face["box"])
    if x < 0 or y < 0 or x + w > image.shape[1] or y + h > image.shape[0]:
        return 0.0
    edge = image[y + 3 : y + h - 3, x].astype(int)
    return float((np.abs(edge - EMOTION_COLORS[face["emotion"]]).max(axis=1) < 60).mean())


@pytest.mark.parametrize("blur", [False, True], ids=["annotated", "blurred"])
def test_launcher_records_an_annotated_video_of_the_demo_camera(tmp_path, blur):
    out = tmp_path / "video"
    camera = {"id": "demo", "source": "demo", "fps": 10, "resize": [960, 540]}
    config = pipeline_config([camera], tmp_path)
    config["recorder"] = {"out": str(out), "blur_faces": blur}
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(json.dumps(config))
    run = subprocess.run(
        [sys.executable, "-m", "deploy", "run", "--config", str(config_path), "--duration", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    log = run.stdout[-3000:] + run.stderr[-3000:]
    assert run.returncode == 0, log
    assert "started recorder" in run.stderr + run.stdout

    videos = list(out.glob("demo-*.avi"))
    assert len(videos) == 1, (sorted(out.iterdir()) if out.exists() else "no output folder", log)
    frames = _read_video(videos[0])
    assert len(frames) >= 10, f"{len(frames)} frames in {videos[0]}\n{log}"
    assert all(f.shape == (PREVIEW_SIZE[1], PREVIEW_SIZE[0], 3) for f in frames)

    # The video holds the classified frames in order: walk the events with faces alongside it and find
    # each one's box drawn in its emotion color at the event's position (scaled to the preview).
    logged = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    with_faces = sorted((e for e in logged if e["type"] == "faces" and e["faces"]), key=lambda e: e["frame"])
    assert len(with_faces) >= 3, f"too few events with a face to check the drawing\n{log}"
    matched, sharpness, cursor = 0, [], 0
    for event in with_faces:
        face = event["faces"][0]
        for i in range(cursor, len(frames)):
            if _outline_match(frames[i], face) > 0.8:
                matched, cursor = matched + 1, i + 1
                x, y, w, h = (round(v * SCALE) for v in face["box"])
                gray = cv2.cvtColor(frames[i][y + 6 : y + h - 6, x + 6 : x + w - 6], cv2.COLOR_BGR2GRAY)
                sharpness.append(float(cv2.Laplacian(gray, cv2.CV_64F).var()))
                break
    assert matched >= 0.8 * len(with_faces), f"boxes of {matched} of {len(with_faces)} events with faces found"
    # Measured on the demo face: ~700-850 as recorded, ~10-50 pixelated.
    median = float(np.median(sharpness))
    if blur:
        assert median < 100, f"face region not blurred: Laplacian variance {median:.0f}"
    else:
        assert median > 300, f"face region looks blurred without blur_faces: Laplacian variance {median:.0f}"
