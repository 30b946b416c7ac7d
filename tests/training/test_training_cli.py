"""The rules the ``python -m training`` subcommands rely on, without training a model: the data layouts
(FER2013 CSV, ``<root>/<split>/<Class>/*.png`` and flat ``<root>/<class>/`` folders), FER+ labels,
calibration and scoring metrics, Grad-CAM on tiny models. The subcommands run end to end are
tests/system/test_training_cli_runs.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from emostream.modelfile import load_model, save_model
from emostream.modelinfo import ModelInfo
from emostream.wire import EMOTIONS
from support import shared_path
from support.training import (
    FAST_FLAGS,
    csv_text,
    pixels,
    run_in_process,
    write_folder,
)

# ---------------------------------------------------------------------------------------------
# CLI end to end
# ---------------------------------------------------------------------------------------------


def test_subcommands_are_registered() -> None:
    from training.__main__ import SUBCOMMANDS

    assert {"train", "explore", "evaluate", "calibrate", "gradcam", "export"} <= set(SUBCOMMANDS)


def test_model_info_falls_back_to_the_single_pass_temperature_and_rejects_bad_ones() -> None:
    from emostream.modelinfo import ModelFileError

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


def test_ferplus_vote_shares_follow_the_votes_left_after_outliers() -> None:
    from training.data import ferplus_vote_shares

    #         neutral happiness surprise sadness anger disgust fear contempt unknown NF
    votes = [[6, 3, 1, 0, 0, 0, 0, 0, 0, 0],  # the single surprise vote is an outlier
             [0, 0, 0, 0, 4, 0, 0, 4, 2, 0],  # contempt and unknown are not FER2013 classes
             [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # no emotion at all: no opinion
             [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]  # every vote an outlier  # fmt: skip
    shares = ferplus_vote_shares(np.asarray(votes))
    expected = np.zeros((4, len(EMOTIONS)), np.float32)
    expected[0, EMOTIONS.index("neutral")], expected[0, EMOTIONS.index("happy")] = 6 / 9, 3 / 9
    expected[1, EMOTIONS.index("angry")] = 1.0
    np.testing.assert_allclose(shares, expected, rtol=1e-6)


def test_ferplus_votes_load_beside_fer2013_labels(tmp_path: Path) -> None:
    from training.data import load_fer2013

    image = pixels(np.zeros((48, 48), np.uint8))
    data_csv = tmp_path / "fer2013.csv"
    usages = ["Training", "Training", "PublicTest"]
    data_csv.write_text(csv_text([(label, image, u) for label, u in zip([3, 6, 2], usages, strict=True)]))
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    votes = ["2,8,0,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,0,0,10", "0,0,0,0,0,0,10,0,0,0"]
    (tmp_path / "fer2013new.csv").write_text(
        header + "".join(f"{u},x{i}.png,{v}\n" for i, (u, v) in enumerate(zip(usages, votes, strict=True)))
    )
    data = load_fer2013(data_csv, ferplus_votes=True)  # fer2013new.csv next to the data by default
    train = data.splits["Training"]
    assert train.labels.tolist() == [3, 6]  # the FER2013 labels stay; votes ride beside them
    assert train.votes is not None
    assert train.votes[0, EMOTIONS.index("happy")] == pytest.approx(0.8)
    assert float(train.votes[1].sum()) == 0.0
    assert data.splits["PublicTest"].votes is not None
    assert load_fer2013(data_csv).splits["Training"].votes is None


def test_training_targets_blend_label_and_votes() -> None:
    import torch

    from training.train import blend_votes

    labels = torch.tensor([0, 3])
    votes = torch.zeros(2, len(EMOTIONS))
    votes[0, 6] = 1.0  # row 1 has no votes
    target = blend_votes(labels, votes, 0.25)
    torch.testing.assert_close(target[0], 0.75 * torch.eye(len(EMOTIONS))[0] + 0.25 * torch.eye(len(EMOTIONS))[6])
    torch.testing.assert_close(target[1], torch.eye(len(EMOTIONS))[3])


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


def test_bad_csv_rows_are_counted_skips_or_strict_errors(tmp_path: Path, synthetic_data) -> None:
    from training.data import DataError, load_dataset

    images, labels = synthetic_data["Training"]
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


def test_unreadable_image_is_a_counted_skip_or_strict_error(tmp_path: Path, synthetic_data) -> None:
    from training.data import DataError, load_dataset

    images, labels = synthetic_data["PrivateTest"]
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


def test_unknown_class_or_split_folder_is_an_error(tmp_path: Path, synthetic_data, capsys) -> None:
    from training.data import DataError, load_dataset

    images, labels = synthetic_data["PrivateTest"]
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


def test_training_needs_all_three_splits(synthetic_flat_folder: Path, tmp_path: Path) -> None:
    from training.data import DataError
    from training.train import main, parse_args

    args = parse_args(["--data", str(synthetic_flat_folder), "--out", str(tmp_path), *FAST_FLAGS])
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


def test_an_unknown_split_of_a_csv_lists_the_splits_the_file_has(
    synthetic_csv: Path, tmp_path: Path, synthetic_data, capsys
):
    model = str(brightness_model(tmp_path))
    status, _, err = run_in_process(
        capsys, "evaluate", "--data", str(synthetic_csv), "--model", model, "--split", "Nope"
    )
    have = ", ".join(
        f"{name} ({len(synthetic_data[name][1])} rows)" for name in ("Training", "PublicTest", "PrivateTest")
    )
    assert status == 1
    assert err.strip().splitlines()[-1] == f"error: {synthetic_csv} has no split 'Nope'; its splits: {have}"


def test_training_help_lists_every_subcommand_with_one_line() -> None:
    import subprocess
    import sys

    from support import REPO
    from training.__main__ import SUBCOMMANDS, SUMMARIES

    assert set(SUMMARIES) == set(SUBCOMMANDS)
    result = subprocess.run(
        [sys.executable, "-m", "training", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0]: line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith("  ")}
    assert listed == SUMMARIES
    bare = subprocess.run([sys.executable, "-m", "training"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "subcommands:" in bare.stderr and "Traceback" not in bare.stderr


def test_gradcam_on_a_photo_explains_each_face_the_served_detector_finds(tmp_path: Path, capsys) -> None:
    photo = shared_path("media", "grace_hopper.jpg")  # 512x600, one face
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((200, 300, 3), 128, np.uint8))
    status, summary, err = run_in_process(
        capsys, "gradcam", "--images", str(photo), str(blank), "--out", str(tmp_path / "out")
    )
    assert status == 0, err
    face, wall = summary["images"]
    assert (face["image"], face["face"], face["overlay"]) == (
        str(photo),
        0,
        f"grace_hopper.face0.gradcam_{face['class']}.png",
    )
    x, y, w, h = face["box"]
    assert x >= 0 and y >= 0 and x + w <= 512 and y + h <= 600 and 100 <= w <= 300, face["box"]
    assert "face found by yunet" in face["crop"]
    # No face in the wall: auto explains the whole image and says it was squashed.
    assert wall["face"] is None and "squashed from 300x200 to 48x48: no face found" in wall["crop"]
    assert "squashed from 300x200" in err and f"{photo} face 0 at" in err
    assert np.load(tmp_path / "out" / "gradcam.npz")["faces"].tolist() == [0, -1]

    status, _, err = run_in_process(
        capsys, "gradcam", "--images", str(blank), "--faces", "detect", "--out", str(tmp_path / "out2")
    )
    assert status == 1 and err.strip().splitlines()[-1].startswith(f"error: {blank}: no face found")
    status, summary, err = run_in_process(
        capsys, "gradcam", "--images", str(photo), "--faces", "whole", "--out", str(tmp_path / "out3")
    )
    assert status == 0, err
    assert summary["images"][0]["face"] is None and "resized from 512x600" in summary["images"][0]["crop"]
