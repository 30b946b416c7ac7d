"""The ``python -m training`` subcommands end to end (explore, train, evaluate, calibrate, gradcam,
export): each run trains or evaluates a real model in a real process, on tiny synthetic data
(tests/support/training.py) or, for the shipped models' reports, on the real data in ../shared. The
data-layout, FER+ and calibration rules they rely on are tests/training/test_training_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from emostream.modelfile import load_model
from emostream.wire import EMOTIONS
from support import shared_path
from support.training import (
    FAST_FLAGS,
    PER_CLASS,
    run_cli,
    run_in_process,
)


@pytest.fixture(scope="module")
def trained(synthetic_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Train one epoch, then resume the same run to two epochs (the model every other test uses), the
    second in the other memory format: a run may change it when it resumes."""
    out = tmp_path_factory.mktemp("run")
    # Named, not auto: auto is channels-last on a CPU with 16-bit convolutions (AVX-512 bf16, AMX).
    first = run_cli(
        "train", "--data", str(synthetic_csv), "--out", str(out), "--epochs", "1",
        "--memory-format", "contiguous", *FAST_FLAGS,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = run_cli(
        "train", "--data", str(synthetic_csv), "--out", str(out), "--epochs", "2", "--resume",
        "--memory-format", "channels-last", *FAST_FLAGS,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    return {"out": out, "model": out / "model.pt2", "first": first.stdout, "second": second.stdout}


def test_explore_counts_histograms_and_samples(
    synthetic_csv: Path, synthetic_image_folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "explore"
    result = run_cli("explore", "--data", str(synthetic_csv), "--out", str(out), "--samples-per-class", "4")
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
        capsys, "explore", "--data", str(synthetic_image_folder), "--out", str(tmp_path / "f")
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
    assert "contiguous_format" in str(trained["first"]) and "channels_last" in str(trained["second"])
    assert "calibration: temperature" in str(trained["second"])
    report = json.loads((out / "report.json").read_text())
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert report["environment"]["memory_format"] == "torch.channels_last"
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


def test_evaluate_prints_one_json_object(trained: dict[str, object], synthetic_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", str(trained["model"]), "--data", str(synthetic_csv), "--out", str(out))
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
    trained: dict[str, object], synthetic_csv: Path, synthetic_image_folder: Path, synthetic_flat_folder: Path, capsys
) -> None:
    model = str(trained["model"])
    status, from_csv, _ = run_in_process(capsys, "evaluate", "--model", model, "--data", str(synthetic_csv))
    assert status == 0
    status, from_folder, _ = run_in_process(
        capsys, "evaluate", "--model", model, "--data", str(synthetic_image_folder), "--split", "test"
    )
    assert status == 0
    status, from_flat, _ = run_in_process(capsys, "evaluate", "--model", model, "--data", str(synthetic_flat_folder))
    assert status == 0
    assert from_folder["split"] == "PrivateTest" and from_flat["split"] == "all"
    assert from_flat["data"]["layout"] == "image_folder_flat"
    # PNG is lossless and folders are read in sorted order: same images, same metrics.
    for other in (from_folder, from_flat):
        assert other["confusion_matrix"] == from_csv["confusion_matrix"]
        assert other["ece"]["raw"] == pytest.approx(from_csv["ece"]["raw"], abs=1e-6)


def test_evaluate_with_flip_tta_scores_the_mean_of_face_and_mirror_logits(
    trained: dict[str, object], synthetic_csv: Path, synthetic_data, capsys
) -> None:
    model = str(trained["model"])
    status, metrics, err = run_in_process(
        capsys, "evaluate", "--model", model, "--data", str(synthetic_csv), "--tta", "flip"
    )
    assert status == 0 and metrics["model"]["tta"] == "flip" and "tta flip" in err
    module, info = load_model(model)
    images, labels = synthetic_data["PrivateTest"]
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
        run_in_process(capsys, "evaluate", "--model", model, "--data", str(synthetic_csv), "--tta", "rotate")
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


def test_evaluate_with_ferplus_labels(
    trained: dict[str, object], synthetic_csv: Path, synthetic_data, tmp_path: Path, capsys
):
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    lines, expected_all = [], []
    for split, (_, labels) in synthetic_data.items():
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
        str(synthetic_csv),
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
    capsys, trained: dict[str, object], synthetic_csv: Path, tmp_path: Path, *extra: str
) -> tuple[int, dict, str, Path, Path]:
    """``calibrate`` of the trained model into tmp_path/calibrated.pt2, merged into a stub training report
    tmp_path/emotion.report.json: (status, stdout JSON, stderr, report, calibrated model)."""
    report = tmp_path / "emotion.report.json"
    report.write_text(json.dumps({"arch": "resnet_fer_tiny"}))
    calibrated = tmp_path / "calibrated.pt2"
    args = ["--model", str(trained["model"]), "--data", str(synthetic_csv), "--output", str(calibrated)]
    status, result, err = run_in_process(capsys, "calibrate", *args, "--report", str(report), *extra)
    return status, result, err, report, calibrated


def test_calibrate_writes_temperature_and_keeps_weights(
    trained: dict[str, object], synthetic_csv: Path, tmp_path: Path, capsys
) -> None:
    status, result, _, report, calibrated = calibrate_into(capsys, trained, synthetic_csv, tmp_path)
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
    trained: dict[str, object], synthetic_csv: Path, tmp_path: Path, capsys
) -> None:
    status, result, err, report, calibrated = calibrate_into(capsys, trained, synthetic_csv, tmp_path, "--tta", "flip")
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


def test_classifier_serves_flip_with_the_flip_temperature(trained: dict[str, object], synthetic_data) -> None:
    from classifier.model import EmotionModel

    module, info = load_model(trained["model"])
    images = synthetic_data["PrivateTest"][0][:10]
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - info.mean) / info.std
    with torch.no_grad():
        logits = (module(x) + module(x.flip(-1))) / 2
    served = EmotionModel(trained["model"], device="cpu", bf16=False, tta="flip")
    assert served.temperature == pytest.approx(info.tta_temperatures["flip"])
    expected = torch.softmax(logits / info.tta_temperatures["flip"], dim=1).numpy()
    np.testing.assert_allclose(served.predict(images), expected, atol=1e-4)
    assert EmotionModel(trained["model"], device="cpu", bf16=False).temperature == pytest.approx(info.temperature)


def test_gradcam_cli_writes_overlays(trained: dict[str, object], synthetic_data, tmp_path: Path) -> None:
    images, labels = synthetic_data["PrivateTest"]
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


@pytest.mark.parametrize(
    ("name", "labels", "n"),
    [("emotion", "fer2013", 3589), ("emotion_accurate", "fer2013", 3589), ("emotion_ferplus", "ferplus", 3137)],
)
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
