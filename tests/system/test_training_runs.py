"""Whole ``python -m training`` runs on tiny synthetic FER2013-format data (no real data needed): a model
that loads, a report that beats chance, resuming, weight averaging, old checkpoints, mixing and a teacher.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emostream.modelfile import load_model
from emostream.wire import EMOTIONS
from support import REPO
from support.training import FAST_FLAGS, PER_CLASS, run_cli, synthetic_rows, write_csv

SHIPPED_MODEL = REPO / "classifier" / "models" / "emotion.pt2"


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("fer") / "fer2013.csv.gz", synthetic_rows(), gz=True)


@pytest.fixture(scope="module")
def runs(data_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A straight 2-epoch run (implicit train) and a 1-epoch run resumed to 2 (explicit ``train``)."""
    base = tmp_path_factory.mktemp("runs")
    straight, resumed = base / "straight", base / "resumed"
    full = run_cli("--data", str(data_csv), "--out", str(straight), "--epochs", "2", *FAST_FLAGS)
    assert full.returncode == 0, full.stderr
    first = run_cli("train", "--data", str(data_csv), "--out", str(resumed), "--epochs", "1", *FAST_FLAGS)
    assert first.returncode == 0, first.stderr
    second = run_cli("train", "--data", str(data_csv), "--out", str(resumed), "--epochs", "2", "--resume", *FAST_FLAGS)
    assert second.returncode == 0, second.stderr
    return {"straight": straight, "resumed": resumed, "resume_stdout": second.stdout}


def test_cli_writes_loadable_model(runs: dict[str, object]) -> None:
    out = runs["straight"]
    assert isinstance(out, Path)
    module, info = load_model(out / "model.pt2")
    assert info.class_names == list(EMOTIONS)
    assert info.arch == "resnet_fer_tiny"
    assert tuple(info.input_size) == (48, 48)
    assert len(info.data_sha256) == 64
    assert {"PublicTest", "PrivateTest"} <= set(info.metrics)
    assert info.extra["config"]["epochs"] == 2
    logits = module(torch.zeros(3, 1, 48, 48))
    assert logits.shape == (3, len(EMOTIONS))
    assert module(torch.zeros(17, 1, 48, 48)).shape == (17, len(EMOTIONS))  # dynamic batch


def test_report_has_metrics_and_beats_chance(runs: dict[str, object]) -> None:
    out = runs["straight"]
    assert isinstance(out, Path)
    report = json.loads((out / "report.json").read_text())
    for key in ("PublicTest", "PrivateTest", "history", "config", "timing", "best_epoch", "data"):
        assert key in report
    test = report["PrivateTest"]
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(test)
    assert set(test["per_class"]) == set(EMOTIONS)
    assert {"precision", "recall", "f1", "support"} <= set(test["per_class"]["disgust"])
    assert np.asarray(test["confusion_matrix"]).shape == (7, 7)
    assert np.asarray(test["confusion_matrix"]).sum() == PER_CLASS["PrivateTest"] * 7
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    assert test["accuracy"] > 2.0 / len(EMOTIONS)  # chance is 1/7 on the balanced synthetic data
    for name in ("training_curves.png", "confusion_privatetest.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0


def test_resume_continues_from_checkpoint_epoch(runs: dict[str, object]) -> None:
    resumed, straight = runs["resumed"], runs["straight"]
    assert isinstance(resumed, Path) and isinstance(straight, Path)
    assert "after epoch 1" in str(runs["resume_stdout"])
    assert "epoch   1/2" not in str(runs["resume_stdout"])  # epoch 1 is not trained again
    ckpt = torch.load(resumed / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1
    history = json.loads((resumed / "report.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    # Data order, augmentation and dropout depend only on (seed, epoch): resuming matches a straight run.
    reference = json.loads((straight / "report.json").read_text())["history"]
    for got, want in zip(history, reference, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-3, abs=1e-3)


def test_weight_average_is_what_gets_selected_resumed_and_shipped(data_csv: Path, tmp_path: Path) -> None:
    flags = ["--data", str(data_csv), "--out", str(tmp_path), *FAST_FLAGS, "--model-ema-decay", "0.9"]
    first = run_cli("train", *flags, "--epochs", "1")
    assert first.returncode == 0, first.stderr
    second = run_cli("train", *flags, "--epochs", "2", "--resume")
    assert second.returncode == 0, second.stderr
    ckpt = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    average = {k.removeprefix("module."): v for k, v in ckpt["model_ema"].items() if k.startswith("module.")}
    assert average.keys() == ckpt["model"].keys()
    assert any(not torch.equal(average[k], ckpt["model"][k]) for k in average), "the average lags the weights"
    # The model file holds the best epoch's average, not the raw weights.
    best = ckpt["best"]["state"]
    shipped = torch.export.load(tmp_path / "model.pt2").state_dict
    assert best.keys() == average.keys() and len(shipped) > 10
    for key, value in shipped.items():
        torch.testing.assert_close(value, best[key])
    # Resuming with the averaging switched on needs a checkpoint that has an average.
    plain = tmp_path / "plain"
    assert run_cli("train", "--data", str(data_csv), "--out", str(plain), *FAST_FLAGS, "--epochs", "1").returncode == 0
    refused = run_cli(
        "train",
        "--data",
        str(data_csv),
        "--out",
        str(plain),
        *FAST_FLAGS,
        "--epochs",
        "2",
        "--resume",
        "--model-ema-decay",
        "0.9",
    )
    assert refused.returncode != 0 and "no weight average" in refused.stderr


# The keys of the checkpoints that runs already under way were started with; resuming needs no other.
ORIGINAL_CHECKPOINT_KEYS = (
    "model",
    "optimizer",
    "lr_scheduler",
    "scaler",
    "model_ema",
    "epoch",
    "args",
    "history",
    "best",
)


def test_a_checkpoint_with_only_the_original_keys_resumes(data_csv: Path, tmp_path: Path) -> None:
    # Weight average and cosine schedule on, so that every original key holds state to restore.
    flags = ["--data", str(data_csv), *FAST_FLAGS, "--model-ema-decay", "0.9", "--lr-scheduler", "cosine"]
    first = run_cli("train", *flags, "--out", str(tmp_path / "first"), "--epochs", "1")
    assert first.returncode == 0, first.stderr
    written = torch.load(tmp_path / "first" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert set(ORIGINAL_CHECKPOINT_KEYS) <= set(written)
    assert all(written[k] is not None for k in ("lr_scheduler", "model_ema"))
    original = tmp_path / "original.pt"
    torch.save({key: written[key] for key in ORIGINAL_CHECKPOINT_KEYS}, original)

    out = tmp_path / "resumed"
    second = run_cli("train", *flags, "--out", str(out), "--epochs", "2", "--resume", str(original))
    assert second.returncode == 0, second.stderr
    assert "after epoch 1" in second.stdout and "epoch   1/2" not in second.stdout
    history = json.loads((out / "report.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == written["history"][0]  # the first epoch's record came from the checkpoint
    resumed = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1
    # The restored average went on averaging: it is not the freshly initialised copy of the weights.
    assert int(resumed["model_ema"]["n_averaged"]) > int(written["model_ema"]["n_averaged"])


def test_training_with_mixing_and_a_teacher_writes_a_model(data_csv: Path, tmp_path: Path) -> None:
    teacher_run = tmp_path / "teacher"
    common = ["--data", str(data_csv), "--arch", "resnet_fer_tiny", "--epochs", "1", "-b", "16", "--no-progress"]
    assert run_cli(*common, "--out", str(teacher_run)).returncode == 0
    student = tmp_path / "student"
    proc = run_cli(
        *common,
        "--out",
        str(student),
        "--mixup-alpha",
        "0.2",
        "--cutmix-alpha",
        "1.0",
        "--teacher",
        str(teacher_run / "model.pt2"),
        "--teacher-tta",
        "multicrop",
    )
    assert proc.returncode == 0, proc.stderr
    assert "teacher:" in proc.stdout
    report = json.loads((student / "report.json").read_text())
    assert report["config"]["teacher"].endswith("model.pt2") and report["config"]["cutmix_alpha"] == 1.0
    bad = run_cli(*common, "--out", str(tmp_path / "bad"), "--teacher", str(data_csv))
    assert bad.returncode != 0 and "--teacher" in bad.stderr


def test_fake_quant_training_rounds_in_training_and_writes_a_float_model(data_csv: Path, tmp_path: Path) -> None:
    common = ["--data", str(data_csv), "--arch", "resnet_fer_tiny", "--epochs", "1", "-b", "16", "--no-progress"]
    proc = run_cli(*common, "--fake-quant", "--out", str(tmp_path / "fq"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "fq" / "report.json").read_text())
    assert report["config"]["fake_quant"] is True
    module = load_model(tmp_path / "fq" / "model.pt2")[0]
    ops = {str(node.target) for node in module.graph.nodes if node.op == "call_function"}
    assert ops and not any("quant" in op for op in ops)  # the rounding lives in training forwards only
    wrong = run_cli(*common, "--arch", "resnet18", "--fake-quant", "--out", str(tmp_path / "w"))
    assert wrong.returncode != 0 and "--fake-quant" in wrong.stderr and "resnet18" in wrong.stderr


def test_init_from_starts_from_a_model_files_weights(data_csv: Path, tmp_path: Path) -> None:
    common = ["--data", str(data_csv), "--epochs", "1", "-b", "16", "--no-progress"]
    source = tmp_path / "source"
    assert run_cli(*common, "--arch", "resnet_fer_tiny", "--out", str(source)).returncode == 0
    # Learning rate 0: the weights the run ends with are the ones it started from.
    tuned = tmp_path / "tuned"
    proc = run_cli(
        *common, "--arch", "resnet_fer_tiny", "--lr", "0", "--init-from", str(source / "model.pt2"), "--out", str(tuned)
    )
    assert proc.returncode == 0, proc.stderr
    assert "init: weights from" in proc.stdout
    before = load_model(source / "model.pt2")[0].state_dict()
    after = load_model(tuned / "model.pt2")[0].state_dict()
    weights = [k for k, v in before.items() if v.ndim == 4]  # conv kernels: BatchNorm statistics still move
    assert weights and all(torch.equal(before[k], after[k]) for k in weights)
    wrong = run_cli(
        *common, "--arch", "resnet_fer", "--init-from", str(source / "model.pt2"), "--out", str(tmp_path / "w")
    )
    assert wrong.returncode != 0 and "--init-from" in wrong.stderr and "does not fit --arch" in wrong.stderr


def test_ferplus_soft_targets_train_from_vote_files(tmp_path: Path) -> None:
    rows = synthetic_rows()
    data = write_csv(tmp_path / "fer2013.csv", rows)
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    lines = [f"{usage},x{i}.png,{'0,' * 9}10\n" for i, (_, _, usage) in enumerate(rows)]  # all NF: no opinion
    (tmp_path / "fer2013new.csv").write_text(header + "".join(lines))
    out = tmp_path / "run"
    proc = run_cli("--data", str(data), "--out", str(out), "--epochs", "1", "--ferplus-soft", "0.3", *FAST_FLAGS)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["ferplus_soft"] == 0.3
    missing = tmp_path / "alone"
    missing.mkdir()
    alone = write_csv(missing / "fer2013.csv", rows)
    bad = run_cli(
        "--data", str(alone), "--out", str(tmp_path / "bad"), "--epochs", "1", "--ferplus-soft", "0.3", *FAST_FLAGS
    )
    assert bad.returncode != 0 and "fer2013new.csv" in bad.stderr


def test_served_crops_take_the_place_of_training_images(tmp_path: Path) -> None:
    rows = synthetic_rows()
    data = write_csv(tmp_path / "fer2013.csv", rows)
    n = sum(1 for _, _, usage in rows if usage == "Training")
    # Served crops that are all blank: trained on them alone, the model cannot learn the classes.
    blank = tmp_path / "blank.npz"
    meta = {"format": "emostream-served-crops/1", "split": "Training", "rows": n, "data_sha256": ""}
    np.savez(blank, crops=np.zeros((n, 48, 48), np.uint8), found=np.ones(n, bool), meta=np.array(json.dumps(meta)))
    scores = {}
    for prob in ("0", "1"):
        out = tmp_path / f"p{prob}"
        args = ("--data", str(data), "--out", str(out), "--epochs", "2", *FAST_FLAGS)
        proc = run_cli(*args, "--served-crops", str(blank), "--served-prob", prob)
        assert proc.returncode == 0, proc.stderr
        assert f"served crops: {blank}, {n} of {n} faces" in proc.stdout
        scores[prob] = json.loads((out / "report.json").read_text())["PublicTest"]["accuracy"]
    assert scores["0"] > 2.0 / len(EMOTIONS) and scores["1"] < scores["0"] - 0.2
    # A teacher trained on the real images, the student on the blank crops alone, the loss all the
    # teacher's: seeing the same blanks, the teacher gives every face one (out-of-distribution) answer;
    # seeing each face's own image (--teacher-view original), an answer per face. Same seed, same draws:
    # only what the teacher sees differs between the two runs, and the loss they train on tells it.
    losses = {}
    for view in ("same", "original"):
        out = tmp_path / f"view_{view}"
        args = ("--data", str(data), "--out", str(out), "--epochs", "1", *FAST_FLAGS, "--served-crops", str(blank))
        proc = run_cli(*args, "--served-prob", "1", "--teacher", str(tmp_path / "p0" / "model.pt2"),
                       "--distill-weight", "1", "--teacher-view", view)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        report = json.loads((out / "report.json").read_text())
        assert report["config"]["teacher_view"] == view
        losses[view] = report["history"][-1]["train_loss"]
    assert abs(losses["original"] - losses["same"]) > 0.1 * losses["same"], losses
    np.savez(blank, crops=np.zeros((3, 48, 48), np.uint8), found=np.ones(3, bool), meta=np.array(json.dumps(meta)))
    bad = run_cli("--data", str(data), "--out", str(tmp_path / "bad"), "--epochs", "1", "--served-crops", str(blank))
    assert bad.returncode != 0 and f"holds 3 Training faces; the Training split has {n}" in bad.stderr
