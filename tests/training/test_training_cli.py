"""The ``python -m training`` subcommands end to end (explore, train, evaluate, calibrate, gradcam,
export) on tiny synthetic data, plus the data-layout, FER+ and calibration rules they rely on.

Synthetic data: class k is a noisy background whose brightness rises with k plus a white 16x16
square in cell k of a 3x3 grid, so a tiny CNN learns it in two epochs. The same images are written
as a FER2013 CSV, as a ``<root>/<split>/<Class>/*.png`` folder and as a flat ``<root>/<class>/`` folder.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from emostream.modelfile import ModelInfo, load_model, save_model
from emostream.wire import EMOTIONS
from support import REPO, shared_path
from support.training import FAST_FLAGS, synthetic_image

PER_CLASS = {"Training": 40, "PublicTest": 14, "PrivateTest": 14}
FOLDER_SPLIT_NAMES = {"Training": "train", "PublicTest": "Val", "PrivateTest": "TEST"}  # aliases, any case
TINY_TRAIN_FLAGS = FAST_FLAGS  # the same tiny, augmentation-free recipe as tests/training/test_training.py


# ---------------------------------------------------------------------------------------------
# Synthetic data and helpers
# ---------------------------------------------------------------------------------------------


def synthetic_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """split -> (images uint8 (N, 48, 48), labels (N,)), classes interleaved."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in PER_CLASS.items():
        labels = np.arange(n * len(EMOTIONS)) % len(EMOTIONS)
        out[split] = (np.stack([synthetic_image(int(k), rng) for k in labels]), labels)
    return out


def csv_text(rows: list[tuple[object, str, str]]) -> str:
    return "emotion,pixels,Usage\n" + "".join(f"{e},{p},{u}\n" for e, p, u in rows)


def pixels(image: np.ndarray) -> str:
    return " ".join(map(str, image.ravel()))


def write_folder(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], with_splits: bool = True) -> Path:
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            # Mixed-case class folders: names are matched case-insensitively.
            name = EMOTIONS[label].upper() if i % 2 else EMOTIONS[label].capitalize()
            folder = root / FOLDER_SPLIT_NAMES[split] / name if with_splits else root / EMOTIONS[label]
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"{split}_{i:04d}.png"), image)
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    """The same CLI entry point in this process (cheaper than a subprocess): (status, stdout JSON, stderr)."""
    from training.__main__ import main

    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    return status, (json.loads(captured.out) if status == 0 else {}), captured.err


@pytest.fixture(scope="module")
def synthetic() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return synthetic_splits()


@pytest.fixture(scope="module")
def data_csv(synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        (int(label), pixels(image), split)
        for split, (images, labels) in synthetic.items()
        for image, label in zip(images, labels, strict=True)
    ]
    path = tmp_path_factory.mktemp("csv") / "fer2013.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(csv_text(rows))
    return path


@pytest.fixture(scope="module")
def image_folder(synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder"), synthetic)


@pytest.fixture(scope="module")
def flat_folder(synthetic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder(tmp_path_factory.mktemp("flat"), {"PrivateTest": synthetic["PrivateTest"]}, with_splits=False)


@pytest.fixture(scope="module")
def trained(data_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Train one epoch, then resume the same run to two epochs (the model every other test uses)."""
    out = tmp_path_factory.mktemp("run")
    first = run_cli("train", "--data", str(data_csv), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS)
    assert first.returncode == 0, first.stderr
    second = run_cli(
        "train", "--data", str(data_csv), "--out", str(out), "--epochs", "2", "--resume", *TINY_TRAIN_FLAGS
    )
    assert second.returncode == 0, second.stderr
    return {"out": out, "model": out / "model.pt2", "first": first.stdout, "second": second.stdout}


# ---------------------------------------------------------------------------------------------
# CLI end to end
# ---------------------------------------------------------------------------------------------


def test_subcommands_are_registered() -> None:
    from training.__main__ import SUBCOMMANDS

    assert {"train", "explore", "evaluate", "calibrate", "gradcam", "export"} <= set(SUBCOMMANDS)


def test_explore_counts_histograms_and_samples(data_csv: Path, image_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "explore"
    result = run_cli("explore", "--data", str(data_csv), "--out", str(out), "--samples-per-class", "4")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == json.loads((out / "explore.json").read_text())
    for split, n in PER_CLASS.items():
        assert report["counts"][split] == dict.fromkeys(EMOTIONS, n)
    assert report["totals"]["per_class"] == dict.fromkeys(EMOTIONS, sum(PER_CLASS.values()))
    hist = report["pixels"]["Training"]["histogram"]
    assert len(hist) == 256 and sum(hist) == PER_CLASS["Training"] * 7 * 48 * 48
    assert report["pixels"]["Training"]["max"] == 255
    assert {len(v) for v in report["samples"]["shown"].values()} == {4}
    assert report["duplicates"]["groups"] == 0
    for name in ("class_counts.png", "pixel_histograms.png", "samples.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The image-folder copy of the same data explores to the same counts and pixel histograms.
    status, folder_report, _ = run_in_process(
        capsys, "explore", "--data", str(image_folder), "--out", str(tmp_path / "f")
    )
    assert status == 0
    assert folder_report["data"]["layout"] == "image_folder_splits"
    assert folder_report["counts"] == report["counts"]
    assert folder_report["pixels"]["PrivateTest"]["histogram"] == report["pixels"]["PrivateTest"]["histogram"]


def test_train_resumes_and_stores_calibration(trained: dict[str, object]) -> None:
    out = trained["out"]
    assert isinstance(out, Path)
    assert "after epoch 1" in str(trained["second"])
    assert "epoch   1/2" not in str(trained["second"])  # the resumed run does not redo epoch 1
    assert "calibration: temperature" in str(trained["second"])
    report = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    calibration = report["calibration"]
    _, info = load_model(out / "model.pt2")
    # The fitted temperature is what the model file serves with.
    assert info.temperature == pytest.approx(calibration["temperature"])
    assert 0.05 <= info.temperature <= 20
    assert calibration["fit_split"] == "PublicTest"
    for split in ("PublicTest", "PrivateTest"):
        assert 0 <= calibration[split]["ece_raw"] <= 1 and 0 <= calibration[split]["ece_calibrated"] <= 1
        assert info.metrics[split]["ece_calibrated"] == pytest.approx(calibration[split]["ece_calibrated"])
    # Temperature scaling minimises NLL on the split it is fitted on.
    assert calibration["PublicTest"]["nll_calibrated"] <= calibration["PublicTest"]["nll_raw"] + 1e-9
    assert [h["epoch"] for h in info.extra["history"]] == [1, 2]
    assert (out / "reliability_privatetest.png").stat().st_size > 0
    # The flip-TTA recipe is scored too and gets its own temperature, fitted on its own logits.
    assert "flip TTA: PublicTest acc" in str(trained["second"])
    flip = report["calibration_flip"]
    assert info.tta_temperatures == {"flip": pytest.approx(flip["temperature"])}
    assert info.temperature_for("flip") == pytest.approx(flip["temperature"])
    assert flip["PublicTest"]["nll_calibrated"] <= flip["PublicTest"]["nll_raw"] + 1e-9
    assert info.metrics["tta_flip"]["PrivateTest"]["accuracy"] == report["tta_flip"]["PrivateTest"]["accuracy"]


def test_evaluate_prints_one_json_object(trained: dict[str, object], data_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", str(trained["model"]), "--data", str(data_csv), "--out", str(out))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)  # the whole stdout is one JSON object; logs went to stderr
    assert "accuracy" in result.stderr
    assert metrics == json.loads((out / "evaluation.json").read_text())
    assert metrics["split"] == "PrivateTest"
    n = PER_CLASS["PrivateTest"] * len(EMOTIONS)
    cm = np.asarray(metrics["confusion_matrix"])
    assert cm.shape == (7, 7) and cm.sum() == n == metrics["n"]
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert cm.sum(axis=1).tolist() == [PER_CLASS["PrivateTest"]] * 7
    for name in EMOTIONS:
        stats = metrics["per_class"][name]
        assert {"precision", "recall", "f1", "support", "roc_auc"} <= set(stats)
        assert all(0 <= stats[k] <= 1 for k in ("precision", "recall", "f1", "roc_auc"))
        assert stats["recall"] == pytest.approx(cm[EMOTIONS.index(name), EMOTIONS.index(name)] / stats["support"])
    f1s = [metrics["per_class"][c]["f1"] for c in EMOTIONS]
    assert metrics["macro_avg"]["f1"] == pytest.approx(np.mean(f1s)) == pytest.approx(metrics["macro_f1"])
    assert metrics["weighted_avg"]["recall"] == pytest.approx(metrics["accuracy"])  # balanced classes
    assert 0 <= metrics["roc_auc_ovr"]["macro"] <= 1 and 0 <= metrics["roc_auc_ovr"]["weighted"] <= 1
    assert 0 <= metrics["ece"]["raw"] <= 1 and 0 <= metrics["ece"]["calibrated"] <= 1
    _, info = load_model(trained["model"])
    assert metrics["model"]["temperature"] == pytest.approx(info.temperature)
    assert metrics["accuracy"] > 2 / len(EMOTIONS)  # learned something (chance is 1/7)
    # The file reproduces the training report's PrivateTest numbers (at most one near-tie argmax flip).
    report = json.loads((Path(trained["out"]) / "report.json").read_text())
    assert abs(metrics["accuracy"] - report["PrivateTest"]["accuracy"]) <= 1 / n + 1e-12
    for name in ("confusion_privatetest.png", "reliability_privatetest.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0


def test_evaluate_image_folders_match_csv(
    trained: dict[str, object], data_csv: Path, image_folder: Path, flat_folder: Path, capsys
) -> None:
    model = str(trained["model"])
    status, from_csv, _ = run_in_process(capsys, "evaluate", "--model", model, "--data", str(data_csv))
    assert status == 0
    status, from_folder, _ = run_in_process(
        capsys, "evaluate", "--model", model, "--data", str(image_folder), "--split", "test"
    )
    assert status == 0
    status, from_flat, _ = run_in_process(capsys, "evaluate", "--model", model, "--data", str(flat_folder))
    assert status == 0
    assert from_folder["split"] == "PrivateTest" and from_flat["split"] == "all"
    assert from_flat["data"]["layout"] == "image_folder_flat"
    # PNG is lossless and folders are read in sorted order: same images, same metrics.
    for other in (from_folder, from_flat):
        assert other["confusion_matrix"] == from_csv["confusion_matrix"]
        assert other["ece"]["raw"] == pytest.approx(from_csv["ece"]["raw"], abs=1e-6)


def test_evaluate_with_flip_tta_scores_the_mean_of_face_and_mirror_logits(
    trained: dict[str, object], data_csv: Path, synthetic, capsys
) -> None:
    model = str(trained["model"])
    status, metrics, err = run_in_process(
        capsys, "evaluate", "--model", model, "--data", str(data_csv), "--tta", "flip"
    )
    assert status == 0 and metrics["model"]["tta"] == "flip" and "tta flip" in err
    module, info = load_model(model)
    images, labels = synthetic["PrivateTest"]
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - info.mean) / info.std
    with torch.no_grad():
        logits = (module(x) + module(x.flip(-1))) / 2
        plain_nll = nn.functional.cross_entropy(module(x), torch.from_numpy(labels)).item()
    nll = nn.functional.cross_entropy(logits, torch.from_numpy(labels)).item()
    # The synthetic classes are partly position patterns, so mirroring changes the scores.
    assert abs(nll - plain_nll) > 1e-3
    assert metrics["nll"]["raw"] == pytest.approx(nll, rel=1e-4)
    # Calibrated with the temperature fitted for flip, not the single-pass one.
    t_flip = info.tta_temperatures["flip"]
    assert abs(t_flip - info.temperature) > 1e-3, "the test must tell the two temperatures apart"
    assert metrics["model"]["temperature"] == pytest.approx(t_flip)
    flip_nll = nn.functional.cross_entropy(logits / t_flip, torch.from_numpy(labels)).item()
    assert metrics["nll"]["calibrated"] == pytest.approx(flip_nll, rel=1e-4)
    predicted = logits.argmax(1).numpy()
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1 / len(labels) + 1e-12)
    with pytest.raises(SystemExit) as info:
        run_in_process(capsys, "evaluate", "--model", model, "--data", str(data_csv), "--tta", "rotate")
    assert info.value.code == 2 and "invalid choice: 'rotate'" in capsys.readouterr().err


def ferplus_votes_for(labels: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """FER+ vote rows agreeing with ``labels``, except every 5th (a 5-5 tie) and every 7th (not a face).

    Returns (votes, expected label or -1 for dropped).
    """
    column_of = {EMOTIONS.index(e): i for i, e in enumerate(("neutral", "happy", "surprise", "sad", "angry"))}
    column_of |= {EMOTIONS.index("disgust"): 5, EMOTIONS.index("fear"): 6}
    votes, expected = [], []
    for i, label in enumerate(labels):
        row = [0] * 10
        col = column_of[int(label)]
        if i % 7 == 6:
            row[9] = 10
            expected.append(-1)
        elif i % 5 == 4:
            row[col], row[(col + 1) % 7] = 5, 5
            expected.append(-1)
        else:
            row[col], row[7] = 8, 2
            expected.append(int(label))
        votes.append(row)
    return votes, np.asarray(expected)


def test_evaluate_with_ferplus_labels(trained: dict[str, object], data_csv: Path, synthetic, tmp_path: Path, capsys):
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    lines, expected_all = [], []
    for split, (_, labels) in synthetic.items():
        votes, expected = ferplus_votes_for(labels)
        lines += [f"{split},img{len(lines)}.png," + ",".join(map(str, v)) + "\n" for v in votes]
        expected_all.append((split, expected))
    ferplus = tmp_path / "fer2013new.csv"
    ferplus.write_text(header + "".join(lines))
    status, metrics, _ = run_in_process(
        capsys,
        "evaluate",
        "--model",
        str(trained["model"]),
        "--data",
        str(data_csv),
        "--labels",
        "ferplus",
        "--ferplus-csv",
        str(ferplus),
    )
    assert status == 0
    expected = dict(expected_all)["PrivateTest"]
    assert metrics["n"] == int((expected >= 0).sum())
    assert [metrics["per_class"][c]["support"] for c in EMOTIONS] == np.bincount(
        expected[expected >= 0], minlength=7
    ).tolist()
    dropped = metrics["data"]["dropped_by_label_rule"]
    assert sum(dropped.values()) == int((expected < 0).sum())
    assert dropped["ferplus: majority not a face (NF)"] == int(sum(1 for i in range(len(expected)) if i % 7 == 6))


def calibrate_into(
    capsys, trained: dict[str, object], data_csv: Path, tmp_path: Path, *extra: str
) -> tuple[int, dict, str, Path, Path]:
    """``calibrate`` of the trained model into tmp_path/calibrated.pt2, merged into a stub training report
    tmp_path/emotion.report.json: (status, stdout JSON, stderr, report, calibrated model)."""
    report = tmp_path / "emotion.report.json"
    report.write_text(json.dumps({"arch": "resnet_fer_tiny"}))
    calibrated = tmp_path / "calibrated.pt2"
    args = ["--model", str(trained["model"]), "--data", str(data_csv), "--output", str(calibrated)]
    status, result, err = run_in_process(capsys, "calibrate", *args, "--report", str(report), *extra)
    return status, result, err, report, calibrated


def test_calibrate_writes_temperature_and_keeps_weights(
    trained: dict[str, object], data_csv: Path, tmp_path: Path, capsys
) -> None:
    status, result, _, report, calibrated = calibrate_into(capsys, trained, data_csv, tmp_path)
    assert status == 0
    temperature = result["calibration"]["temperature"]
    module, info = load_model(calibrated)
    original, original_info = load_model(trained["model"])
    assert info.temperature == pytest.approx(temperature)
    assert info.metrics["calibration"]["fit_split"] == "PublicTest"
    assert info.class_names == original_info.class_names and info.extra == original_info.extra
    before, after = original.state_dict(), module.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    merged = json.loads(report.read_text())
    assert merged["arch"] == "resnet_fer_tiny" and merged["calibration"]["temperature"] == pytest.approx(temperature)
    assert (tmp_path / "emotion.reliability_privatetest.png").stat().st_size > 0
    # The same fit as at the end of training (same PublicTest logits, same optimiser).
    assert temperature == pytest.approx(original_info.temperature, rel=1e-3)


def test_calibrate_with_flip_tta_stores_a_second_temperature(
    trained: dict[str, object], data_csv: Path, tmp_path: Path, capsys
) -> None:
    status, result, err, report, calibrated = calibrate_into(capsys, trained, data_csv, tmp_path, "--tta", "flip")
    assert status == 0 and "for tta flip" in err
    fitted = result["calibration"]
    assert fitted["tta"] == "flip"
    _, info = load_model(calibrated)
    _, original_info = load_model(trained["model"])
    # The single-pass temperature is kept; flip's is the one fitted here, as training fitted it.
    assert info.temperature == original_info.temperature
    assert info.tta_temperatures["flip"] == pytest.approx(fitted["temperature"])
    assert fitted["temperature"] == pytest.approx(original_info.tta_temperatures["flip"], rel=1e-3)
    assert fitted["previous_temperature"] == pytest.approx(original_info.tta_temperatures["flip"])
    assert info.metrics["calibration_flip"]["temperature"] == pytest.approx(fitted["temperature"])
    assert info.metrics["calibration"] == original_info.metrics["calibration"]
    merged = json.loads(report.read_text())
    assert merged["calibration_flip"]["tta"] == "flip" and "calibration" not in merged
    assert (tmp_path / "emotion.reliability_privatetest_flip.png").stat().st_size > 0


def test_classifier_serves_flip_with_the_flip_temperature(trained: dict[str, object], synthetic) -> None:
    from classifier.model import EmotionModel

    module, info = load_model(trained["model"])
    images = synthetic["PrivateTest"][0][:10]
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - info.mean) / info.std
    with torch.no_grad():
        logits = (module(x) + module(x.flip(-1))) / 2
    served = EmotionModel(trained["model"], device="cpu", bf16=False, tta="flip")
    assert served.temperature == pytest.approx(info.tta_temperatures["flip"])
    expected = torch.softmax(logits / info.tta_temperatures["flip"], dim=1).numpy()
    np.testing.assert_allclose(served.predict(images), expected, atol=1e-4)
    assert EmotionModel(trained["model"], device="cpu", bf16=False).temperature == pytest.approx(info.temperature)


def test_model_info_falls_back_to_the_single_pass_temperature_and_rejects_bad_ones() -> None:
    from emostream.modelfile import ModelFileError

    old = json.loads(ModelInfo(arch="a", class_names=list(EMOTIONS), temperature=1.3).to_json())
    del old["tta_temperatures"]  # a file written before per-TTA temperatures existed
    info = ModelInfo.from_json(json.dumps(old))
    assert info.temperature_for("none") == info.temperature_for("flip") == 1.3
    info = ModelInfo.from_json(json.dumps({**old, "tta_temperatures": {"flip": 0.9}}))
    assert (info.temperature_for("none"), info.temperature_for("flip")) == (1.3, 0.9)
    with pytest.raises(ValueError, match="unknown test-time augmentation"):
        info.temperature_for("rotate")
    for bad in ({"flip": -1.0}, {"rotate": 1.0}, {"flip": "hot"}, [0.9]):
        with pytest.raises(ModelFileError, match="tta_temperatures"):
            ModelInfo.from_json(json.dumps({**old, "tta_temperatures": bad}))


def test_gradcam_cli_writes_overlays(trained: dict[str, object], synthetic, tmp_path: Path) -> None:
    images, labels = synthetic["PrivateTest"]
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"face{i}.png")
        cv2.imwrite(str(paths[-1]), images[i])
    out = tmp_path / "cam"
    result = run_cli("gradcam", "--model", str(trained["model"]), "--images", *map(str, paths), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [item["class"] for item in summary["images"]] == [item["predicted"] for item in summary["images"]]
    for item in summary["images"]:
        assert (out / item["overlay"]).stat().st_size > 0
        assert sum(item["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    cams = np.load(out / "gradcam.npz")
    assert cams["heatmaps"].shape == (3, 48, 48)
    assert cams["heatmaps"].min() >= 0 and cams["heatmaps"].max() <= 1
    assert len(summary["activation_shape"]) == 3

    # An explicit class (any case) is explained instead of the predicted one.
    result = run_cli(
        "gradcam", "--model", str(trained["model"]), "--images", str(paths[0]), "--class", "SURPRISE", "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["images"][0]["class"] == "surprise"
    from training.gradcam import cli as gradcam_cli

    model = str(trained["model"])
    assert gradcam_cli(["--model", model, "--images", str(paths[0]), "--class", "boredom", "--out", str(out)]) == 1


def brightness_model(tmp_path: Path) -> Path:
    """A hand-set CNN whose class-0 logit is the mean of ReLU(input): evidence = bright pixels."""
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    fc = nn.Linear(1, len(EMOTIONS))
    with torch.no_grad():
        conv.weight.fill_(1 / 9)
        fc.weight.zero_()
        fc.weight[0, 0] = 1.0
        fc.bias.zero_()
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)
    path = tmp_path / "bright.pt2"
    save_model(net, ModelInfo(arch="bright", class_names=list(EMOTIONS), mean=0.5, std=0.25), path)
    return path


def test_gradcam_peaks_where_the_evidence_is(tmp_path: Path) -> None:
    from classifier.model import EmotionModel
    from training.gradcam import gradcam

    crop = np.full((2, 48, 48), 20, np.uint8)  # dark: below the mean, so ReLU -> 0
    crop[0, 4:16, 30:44] = 250  # bright patch top right
    crop[1, 34:46, 2:14] = 250  # bright patch bottom left
    path = brightness_model(tmp_path)
    heat = gradcam(load_model(path), crop, class_index=0)
    assert heat.shape == (2, 48, 48) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() == pytest.approx(1)
    for i, (rows, cols) in enumerate(((slice(4, 16), slice(30, 44)), (slice(34, 46), slice(2, 14)))):
        r, c = np.unravel_index(heat[i].argmax(), heat[i].shape)
        assert rows.start <= r < rows.stop and cols.start <= c < cols.stop
        outside = np.ones((48, 48), bool)
        outside[rows.start - 2 : rows.stop + 2, cols.start - 2 : cols.stop + 2] = False
        assert heat[i][outside].max() < 0.05
    # The serving object works too, even from inside inference_mode, and gives the same maps.
    served = EmotionModel(path, device="cpu", bf16=False)
    with torch.inference_mode():
        assert np.allclose(gradcam(served, crop, class_index=0), heat, atol=1e-5)


def test_gradcam_on_the_shipped_model() -> None:
    from training.gradcam import gradcam_details
    from training.inference import load, shipped_model_path

    if not shipped_model_path().is_file():
        pytest.skip("classifier/models/emotion.pt2 is not shipped")
    module, info, _ = load()
    crops = np.random.default_rng(0).integers(0, 256, size=(2, 48, 48), dtype=np.uint8)
    result = gradcam_details((module, info), crops)
    assert result.heatmaps.shape == (2, 48, 48)
    assert result.heatmaps.min() >= 0 and result.heatmaps.max() <= 1
    assert result.activation_shape[1:] == (6, 6)  # the last residual stage of resnet_fer


def test_export_onnx_parity(trained: dict[str, object], tmp_path: Path) -> None:
    onnx_path = tmp_path / "emotion.onnx"
    result = run_cli("export", "--model", str(trained["model"]), "--onnx", str(onnx_path), "--batch-sizes", "1", "5")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    parity = summary["parity"]
    assert parity["ok"] and parity["max_abs_diff"] <= parity["atol"]
    assert parity["batch_sizes"] == [1, 5] and parity["argmax_agreement"] == 1.0
    assert "parity OK" in result.stderr

    import onnx
    import onnxruntime as ort

    metadata = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert json.loads(metadata["emostream.json"])["class_names"] == list(EMOTIONS)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    x = np.random.default_rng(1).normal(size=(3, 1, 48, 48)).astype(np.float32)
    module, _ = load_model(trained["model"])
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert np.allclose(session.run(None, {"input": x})[0], expected, atol=1e-4, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# FER+ majority vote
# ---------------------------------------------------------------------------------------------


def test_ferplus_majority_rule_on_a_hand_table() -> None:
    from training.data import (
        FERPLUS_CONTEMPT,
        FERPLUS_NO_MAJORITY,
        FERPLUS_NOT_A_FACE,
        FERPLUS_UNKNOWN,
        ferplus_majority,
    )

    idx = EMOTIONS.index
    # columns: neutral happiness surprise sadness anger disgust fear contempt unknown NF
    table = [
        ([10, 0, 0, 0, 0, 0, 0, 0, 0, 0], idx("neutral")),
        ([0, 6, 0, 4, 0, 0, 0, 0, 0, 0], idx("happy")),
        ([0, 0, 0, 0, 5, 5, 0, 0, 0, 0], FERPLUS_NO_MAJORITY),  # tie: no strict majority
        ([3, 0, 0, 0, 0, 0, 0, 7, 0, 0], FERPLUS_CONTEMPT),  # not a FER2013 class
        ([0, 0, 0, 0, 0, 0, 4, 0, 6, 0], FERPLUS_UNKNOWN),
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], FERPLUS_NOT_A_FACE),
        # Single votes are dropped first: 4 of the remaining 4 votes is a majority (4 of 10 is not).
        ([1, 1, 4, 1, 1, 1, 1, 0, 0, 0], idx("surprise")),
        ([1, 0, 0, 4, 0, 0, 5, 0, 0, 0], idx("fear")),  # 5 of 9 after dropping the single vote
        ([0, 0, 0, 5, 0, 0, 0, 0, 0, 5], FERPLUS_NO_MAJORITY),
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], FERPLUS_NO_MAJORITY),  # nothing left
        ([0, 0, 0, 0, 3, 2, 2, 0, 0, 0], FERPLUS_NO_MAJORITY),  # 3 of 7 is a plurality, not a majority
        ([0, 0, 0, 0, 0, 2, 0, 0, 0, 1], idx("disgust")),
    ]
    votes = np.asarray([v for v, _ in table])
    assert ferplus_majority(votes).tolist() == [label for _, label in table]


def test_ferplus_labels_join_fer2013_rows(tmp_path: Path) -> None:
    from training.data import DataError, load_fer2013

    image = pixels(np.zeros((48, 48), np.uint8))
    data_csv = tmp_path / "fer2013.csv"
    usages = ["Training", "Training", "PublicTest", "PrivateTest"]
    data_csv.write_text(csv_text([(0, image, u) for u in usages]))
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    votes = ["0,9,1,0,0,0,0,0,0,0", "5,0,0,0,0,0,0,0,0,5", "0,0,0,0,0,0,8,0,2,0", "0,0,0,0,0,0,0,0,0,10"]
    ferplus = tmp_path / "fer2013new.csv"
    ferplus.write_text(
        header + "".join(f"{u},x{i}.png,{v}\n" for i, (u, v) in enumerate(zip(usages, votes, strict=True)))
    )
    data = load_fer2013(data_csv, labels="ferplus", ferplus_csv=ferplus)
    assert data.splits["Training"].labels.tolist() == [EMOTIONS.index("happy")]  # row 1: 5-5 tie dropped
    assert data.splits["PublicTest"].labels.tolist() == [EMOTIONS.index("fear")]
    assert len(data.splits["PrivateTest"]) == 0
    assert data.dropped == {"ferplus: no strict majority": 1, "ferplus: majority not a face (NF)": 1}
    assert data.skipped_rows == 0

    ferplus.write_text(header + "".join(f"Training,x{i}.png,{v}\n" for i, v in enumerate(votes)))
    with pytest.raises(DataError, match=r"data row 2 .*Usage 'Training' but the FER2013 CSV says 'PublicTest'"):
        load_fer2013(data_csv, labels="ferplus", ferplus_csv=ferplus)
    ferplus.write_text(header + f"Training,x.png,{votes[0]}\n")
    with pytest.raises(DataError, match="has 1 rows but the FER2013 CSV has 4"):
        load_fer2013(data_csv, labels="ferplus", ferplus_csv=ferplus)


def test_ferplus_on_the_shared_data() -> None:
    from training.data import FERPLUS_NOT_A_FACE, load_ferplus_codes

    codes = load_ferplus_codes(shared_path("data", "fer2013", "fer2013new.csv"))
    assert codes.shape == (35887,)
    # Kept per split: Training 24,941, PublicTest 3,186, PrivateTest 3,137 (the FER+ majority sets).
    assert int((codes >= 0).sum()) == 24_941 + 3_186 + 3_137
    # Blank image names are FER+'s not-a-face rows (10 NF votes): the rule drops them all.
    assert int((codes == FERPLUS_NOT_A_FACE).sum()) >= 173


# ---------------------------------------------------------------------------------------------
# Data errors: a clear error naming the row/file, or a counted skip
# ---------------------------------------------------------------------------------------------


def test_bad_csv_rows_are_counted_skips_or_strict_errors(tmp_path: Path, synthetic) -> None:
    from training.data import DataError, load_dataset

    images, labels = synthetic["Training"]
    rows = [(int(labels[i]), pixels(images[i]), "Training") for i in range(6)]
    rows[2] = (int(labels[2]), "1 2 3", "Training")  # wrong pixel count
    rows[4] = (int(labels[4]), pixels(images[4]).replace("255", "x", 1), "Training")  # non-numeric
    rows[5] = (int(labels[5]), pixels(images[5]).replace("255", "256", 1), "Training")  # out of range
    path = tmp_path / "bad.csv"
    path.write_text(csv_text(rows))
    with pytest.warns(UserWarning, match="skipped 3 row"):
        data = load_dataset(path)
    assert len(data.splits["Training"]) == 3
    assert data.splits["Training"].labels.tolist() == [int(labels[i]) for i in (0, 1, 3)]
    assert data.skipped_rows == 3 and sum(data.skipped.values()) == 3
    assert any("3 pixel values instead of 2304" in e and "data row 2" in e for e in data.examples)
    with pytest.raises(DataError, match=r"bad.csv data row 2 \(line 4\): 3 pixel values instead of 2304"):
        load_dataset(path, strict=True)
    path.write_text(csv_text([rows[0], rows[4]]))
    with pytest.raises(DataError, match=r"data row 1 \(line 3\): non-numeric pixel values"):
        load_dataset(path, strict=True)


def test_unreadable_image_is_a_counted_skip_or_strict_error(tmp_path: Path, synthetic) -> None:
    from training.data import DataError, load_dataset

    images, labels = synthetic["PrivateTest"]
    root = write_folder(tmp_path / "flat", {"PrivateTest": (images[:7], labels[:7])}, with_splits=False)
    broken = root / "happy" / "broken.png"
    broken.write_bytes(b"not an image at all")
    (root / "happy" / "notes.txt").write_text("ignored: not an image suffix")
    big = root / "sad" / "big.jpg"
    cv2.imwrite(str(big), cv2.resize(images[4], (96, 96)))
    with pytest.warns(UserWarning) as caught:
        data = load_dataset(root)
    messages = [str(w.message) for w in caught]
    assert any("skipped 1" in m for m in messages) and any("resized 1 image" in m for m in messages)
    assert len(data.splits["all"]) == 8  # 7 + the resized jpg; broken.png skipped, notes.txt ignored
    assert data.skipped == {"unreadable image": 1} and data.resized == 1
    assert str(broken) in data.examples[0]
    with pytest.raises(DataError, match=rf"{broken}: unreadable image"):
        load_dataset(root, strict=True)


def test_unknown_class_or_split_folder_is_an_error(tmp_path: Path, synthetic, capsys) -> None:
    from training.data import DataError, load_dataset

    images, labels = synthetic["PrivateTest"]
    root = write_folder(tmp_path / "flat", {"PrivateTest": (images[:7], labels[:7])}, with_splits=False)
    (root / "Contempt").mkdir()
    cv2.imwrite(str(root / "Contempt" / "a.png"), images[0])
    with pytest.raises(DataError, match="unknown class folder .*Contempt"):
        load_dataset(root)
    status, _, err = run_in_process(capsys, "evaluate", "--data", str(root), "--model", str(brightness_model(tmp_path)))
    assert status == 1 and "unknown class folder" in err and "Contempt" in err

    split_root = write_folder(tmp_path / "splits", {"PrivateTest": (images[:7], labels[:7])})
    (split_root / "holdout" / "angry").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown split folder .*holdout"):
        load_dataset(split_root)


def test_training_needs_all_three_splits(flat_folder: Path, tmp_path: Path) -> None:
    from training.data import DataError
    from training.train import main, parse_args

    args = parse_args(["--data", str(flat_folder), "--out", str(tmp_path), *TINY_TRAIN_FLAGS])
    with pytest.raises(DataError, match="training needs all three"):
        main(args)


# ---------------------------------------------------------------------------------------------
# Metrics against hand-computed values
# ---------------------------------------------------------------------------------------------


def test_ece_on_a_hand_example() -> None:
    from training.metrics import expected_calibration_error, reliability_bins

    probs = np.array(
        [
            [0.9, 0.05, 0.03, 0.02],  # conf 0.90, correct
            [0.8, 0.1, 0.05, 0.05],  # conf 0.80, wrong
            [0.4, 0.3, 0.2, 0.1],  # conf 0.40, correct
            [0.35, 0.25, 0.2, 0.2],  # conf 0.35, wrong
        ]
    )
    labels = np.array([0, 1, 0, 2])
    # Bin (0, .5]: acc .5, conf .375 -> |gap| .125, weight 2/4. Bin (.5, 1]: acc .5, conf .85 -> .35, 2/4.
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.5 * 0.125 + 0.5 * 0.35)
    bins = reliability_bins(probs, labels, n_bins=2)
    assert bins["count"] == [2, 2]
    assert bins["confidence"] == pytest.approx([0.375, 0.85]) and bins["accuracy"] == pytest.approx([0.5, 0.5])
    # A confidence on a bin edge belongs to the lower bin: (0, .5], (.5, 1].
    assert reliability_bins(np.array([[0.5, 0.5]]), np.array([0]), n_bins=2)["count"] == [1, 0]
    # Perfectly confident and right: no calibration error.
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_temperature_fit_recovers_a_known_temperature() -> None:
    from training.metrics import fit_temperature, negative_log_likelihood, softmax

    rng = np.random.default_rng(0)
    logits = rng.normal(scale=4.0, size=(20_000, 7))
    for true_t in (0.5, 2.0):
        probs = softmax(logits, true_t)
        # Labels drawn from softmax(logits / T): temperature scaling's own model, so the fit recovers T.
        labels = (probs.cumsum(axis=1) > rng.random((len(probs), 1))).argmax(axis=1)
        fitted = fit_temperature(logits, labels)
        assert fitted == pytest.approx(true_t, rel=0.05)
        nll = negative_log_likelihood(logits, labels, fitted)
        assert nll <= negative_log_likelihood(logits, labels, fitted * 1.1)
        assert nll <= negative_log_likelihood(logits, labels, fitted / 1.1)


def test_accuracy_and_f1_on_a_hand_confusion() -> None:
    from training.metrics import classification_metrics, evaluation_report

    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1: a = 2*1*(2/3)/(1+2/3) = 0.8, b = 0.5, c = 2*(1/2)*1/(3/2) = 2/3.
    assert [m["per_class"][c]["f1"] for c in "abc"] == pytest.approx([0.8, 0.5, 2 / 3])
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    logits = np.eye(3)[y_pred] * 5.0
    report = evaluation_report(y_true, logits, ["a", "b", "c"])
    assert report["weighted_avg"]["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert report["macro_avg"]["precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert report["ece"]["raw"] == report["ece"]["calibrated"]  # temperature 1
    assert all(0 <= report["per_class"][c]["roc_auc"] <= 1 for c in "abc")


def test_roc_auc_skips_classes_without_positives() -> None:
    from training.metrics import one_vs_rest_auc

    # Class a: positives score [.9, .4], negatives [.6, .2]: 3 of the 4 pairs ordered right -> 0.75.
    # Class b: positives [.4, .8], negatives [.1, .6]: also 3 of 4. Class c has no positive: no AUC.
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0], [0.2, 0.8, 0.0]])
    auc = one_vs_rest_auc(y, probs, ["a", "b", "c"])
    assert auc["per_class"] == {"a": 0.75, "b": 0.75, "c": None}
    assert auc["macro"] == 0.75 and auc["weighted"] == 0.75


# ---------------------------------------------------------------------------------------------
# Real data (../shared), light
# ---------------------------------------------------------------------------------------------


def test_real_fer2013_privatetest_parses_only_that_split() -> None:
    from training.data import load_dataset

    path = shared_path("data", "fer2013", "fer2013.csv.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_dataset(path, splits=("PrivateTest",), hash_file=False)
    assert list(data.splits) == ["PrivateTest"]
    assert data.splits["PrivateTest"].class_counts() == [491, 55, 528, 879, 594, 416, 626]


@pytest.mark.parametrize(("name", "labels", "n"), [("emotion", "fer2013", 3589), ("emotion_ferplus", "ferplus", 3137)])
def test_shipped_model_reproduces_its_report(capsys, name: str, labels: str, n: int) -> None:
    from training.inference import shipped_model_path

    data = shared_path("data", "fer2013", "fer2013.csv.gz")
    model = shipped_model_path().with_name(f"{name}.pt2")
    if not model.is_file():
        pytest.skip(f"classifier/models/{model.name} is not shipped")
    report = json.loads(model.with_name(f"{name}.report.json").read_text())
    assert report["config"]["labels"] == labels
    args = ["evaluate", "--data", str(data), "--split", "PrivateTest", "--model", str(model), "--labels", labels]
    status, metrics, _ = run_in_process(capsys, *args)
    assert status == 0
    assert metrics["n"] == report["PrivateTest"]["n"] == n
    assert metrics["accuracy"] == pytest.approx(report["PrivateTest"]["accuracy"], abs=1 / n)
    assert metrics["macro_f1"] == pytest.approx(report["PrivateTest"]["macro_f1"], abs=2e-3)
