"""``python -m training pipeline-eval`` and ``video-labels`` end to end on real faces (processes that
load the detector and the model)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.backends import YUNET_MODEL, YuNetDetector
from support import SHARED
from support.training import run_cli

MEDIA = SHARED / "media"
PHOTOS = ("lena.jpg", "grace_hopper.jpg", "messi5.jpg")


def fer_like_faces() -> list[np.ndarray]:
    """48x48 grey crops of the real faces in the shared photos, framed about as FER2013 frames faces."""
    detector = YuNetDetector(YUNET_MODEL)
    faces = []
    for name in PHOTOS:
        path = MEDIA / name
        if not path.is_file():
            pytest.skip(f"shared test media {path} is missing (see shared/media/SOURCE.md)")
        image = cv2.imread(str(path))
        x, y, w, h = detector.detect(image).boxes[0]
        side = int(max(w, h) * 1.1)
        cx, cy = x + w // 2, y + h // 2
        square = cv2.copyMakeBorder(image, side, side, side, side, cv2.BORDER_REPLICATE)
        crop = square[cy + side - side // 2 : cy + side + side // 2, cx + side - side // 2 : cx + side + side // 2]
        faces.append(cv2.resize(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA))
    return faces


def test_pipeline_eval_cli_on_a_few_real_faces(tmp_path: Path) -> None:
    from classifier.model import EmotionModel

    faces = fer_like_faces()
    # Labelled with the model's own reading of each crop, so the direct accuracy is 1 and every ratio is defined.
    labels = EmotionModel(device="cpu", bf16=False).predict(np.stack(faces)).argmax(1)
    rows = [f"{label},{' '.join(map(str, face.ravel()))},PublicTest" for label, face in zip(labels, faces, strict=True)]
    data = tmp_path / "faces.csv"
    data.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    out = tmp_path / "eval"
    command = ["pipeline-eval", "--data", str(data), "--split", "PublicTest"]
    proc = run_cli(*command, "--conditions", "upright,roll30", "--backends", "haar,yunet-align", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert json.loads((out / "pipeline_eval.json").read_text()) == result
    assert (out / "pipeline_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| upright | yunet-align |" in (out / "pipeline_eval.md").read_text()
    cells = {(c["condition"], c["backend"]): c for c in result["cells"]}
    assert set(cells) == {(c, b) for c in ("upright", "roll30") for b in ("haar", "yunet-align")}
    assert result["faces_per_condition"] == 3 and result["direct_accuracy"] == 1.0
    for cell in cells.values():
        assert cell["faces"] == 3 and 0 <= cell["detected"] <= 3
        # The faces a backend missed, by index, and their sheet: one 96-px tile each, ten to a row.
        assert len(cell["missed"]) == 3 - cell["detected"] and set(cell["missed"]) <= {0, 1, 2}
        sheet = out / f"missed_{cell['condition']}_{cell['backend']}.png"
        if cell["missed"]:
            image = cv2.imread(str(sheet))
            assert image is not None and image.shape == (96, 960, 3)
            # Tile k is face missed[k], upscaled: its lower half (below the index label) matches.
            k, face = 0, faces[cell["missed"][0]]
            expected = cv2.resize(face, (96, 96), interpolation=cv2.INTER_CUBIC)[48:]
            assert np.abs(image[48:, k * 96 : (k + 1) * 96, 0].astype(int) - expected).max() <= 1
        else:
            assert not sheet.exists()
        # A missed face counts as wrong: end to end is the detected faces' accuracy times the detection rate.
        if cell["detected"]:
            expected = cell["accuracy_detected"] * cell["detection_rate"]
            assert cell["accuracy_end_to_end"] == pytest.approx(expected)
            assert cell["ratio_detected"] == pytest.approx(cell["accuracy_detected"] / cell["direct_accuracy_detected"])
    assert any(cell["missed"] for cell in cells.values())  # Haar misses some: a sheet is checked
    # YuNet finds these real, upright faces; turned 30 degrees, the rolled passes still find most of them.
    assert cells[("upright", "yunet-align")]["detected"] == 3
    assert cells[("roll30", "yunet-align")]["detected"] >= 2
    bad = run_cli(*command, "--conditions", "upright,sideways")
    assert bad.returncode == 2 and "--conditions" in bad.stderr and "sideways" in bad.stderr


def test_video_labels_cli_labels_every_frame_and_reports_tracks(tmp_path: Path) -> None:
    lena = MEDIA / "lena.jpg"
    if not lena.is_file():
        pytest.skip(f"shared test media {lena} is missing (see shared/media/SOURCE.md)")
    image = cv2.resize(cv2.imread(str(lena)), (320, 320))
    video = tmp_path / "lena.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 320))
    for i in range(8):  # the face drifts right by 2 px a frame: one track
        writer.write(np.roll(image, 2 * i, axis=1))
    writer.release()
    out = tmp_path / "labels"
    proc = run_cli("video-labels", "--video", str(video), "--no-align", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["frames"] == 8 and summary["faces"] == 8 and summary["tracks"] == 1
    assert summary["detector"]["align"] is False and summary["detector"]["backend"] == "yunet"
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in events] == list(range(8)) and all(len(e["faces"]) == 1 for e in events)
    assert len({e["faces"][0]["track"] for e in events}) == 1
    flips = sum(a["faces"][0]["emotion"] != b["faces"][0]["emotion"] for a, b in zip(events, events[1:], strict=False))
    assert summary["label_flips_per_track"] == flips
    assert 0 < summary["mean_confidence"] <= 1
    assert (out / "frames.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --interval 4: boxes found on frames 0 and 4, held on the frames between (the face moves 2 px a frame).
    held = tmp_path / "held"
    proc = run_cli("video-labels", "--video", str(video), "--no-align", "--interval", "4", "--out", str(held))
    assert proc.returncode == 0, proc.stderr
    boxes = [json.loads(line)["faces"][0]["box"] for line in (held / "events.jsonl").read_text().splitlines()]
    assert boxes[1:4] == [boxes[0]] * 3 and boxes[5:8] == [boxes[4]] * 3 and boxes[4] != boxes[0]


def test_framing_cli_measures_a_mirror_symmetric_template_near_the_shipped_one(tmp_path: Path) -> None:
    from detector.align import FER2013_TEMPLATE

    faces = fer_like_faces()
    rows = [f"6,{' '.join(map(str, face.ravel()))},Training" for face in faces]
    data = tmp_path / "faces.csv"
    data.write_text("emotion,pixels,Usage\n" + "\n".join(rows) + "\n")
    out = tmp_path / "framing"
    proc = run_cli("framing", "--data", str(data), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert json.loads((out / "framing.json").read_text()) == result
    assert cv2.imread(str(out / "framing.png")) is not None
    assert result["images"] == 3 and result["faces_found"] >= 2
    template = np.array(result["template"])
    # Mirror-symmetric: the eyes and the mouth corners mirror each other about x = 0.5, the nose is on it.
    np.testing.assert_allclose(template[0, 0] + template[1, 0], 1.0, atol=2e-4)
    np.testing.assert_allclose(template[3, 0] + template[4, 0], 1.0, atol=2e-4)
    assert template[0, 1] == template[1, 1] and template[2, 0] == 0.5
    # These photos' crops are framed about as FER2013's faces: their landmarks land near the template.
    assert np.abs(template - FER2013_TEMPLATE).max() < 0.1
