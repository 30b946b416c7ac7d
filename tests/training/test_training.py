"""Tests for the training package, on tiny synthetic FER2013-format data (no real data needed): the config
and its errors, data reading, presets, test-time augmentation, mixing and distillation. Whole training
runs (train, resume, weight averaging, a teacher) are tests/system/test_training_runs.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from emostream.modelfile import load_model
from emostream.wire import EMOTIONS
from support import REPO
from support.training import FAST_FLAGS, run_cli, synthetic_rows, write_csv

SHIPPED_MODEL = REPO / "classifier" / "models" / "emotion.pt2"


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("fer") / "fer2013.csv.gz", synthetic_rows(), gz=True)


def test_config_unknown_key_is_an_error(data_csv: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 1\nlearning_rat: 0.1\n")
    result = run_cli("--config", str(config), "--data", str(data_csv), "--out", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
    assert not (tmp_path / "out").exists()


def test_config_sets_defaults_and_flags_win(tmp_path: Path) -> None:
    from training.train import parse_args

    config = tmp_path / "ok.yaml"
    config.write_text("epochs: 3\nbatch-size: 16\narch: resnet_fer_tiny\ndata: x.csv\nout: o\n")
    args = parse_args(["--config", str(config), "--epochs", "5"])
    assert (args.epochs, args.batch_size, args.arch, args.data) == (5, 16, "resnet_fer_tiny", "x.csv")


@pytest.mark.parametrize("config", sorted((REPO / "training" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(config: Path) -> None:
    """Every recipe in training/configs is a valid config whose files (a teacher, a model to start from)
    exist in the repository, so the commands in training/README.md run as written."""
    from training.train import parse_args

    args = parse_args(["--config", str(config), "--data", "x.csv", "--out", "o"])
    assert args.epochs >= 1
    for path in (args.teacher, args.init_from):
        if path is not None:
            assert (REPO / path).is_file(), f"{config.name}: {path} is not in the repository"


@pytest.mark.parametrize(("text", "key"), [("epochs: 2.5\n", "epochs"), ("arch: vgg99\n", "arch")])
def test_config_values_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    from training.train import parse_args

    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as exc:
        parse_args(["--config", str(config), "--data", "x.csv", "--out", "o"])
    assert exc.value.code != 0
    assert f"config key {key}" in capsys.readouterr().err


def test_resume_without_checkpoint_is_an_error(data_csv: Path, tmp_path: Path) -> None:
    from training.train import main, parse_args

    args = parse_args(["--data", str(data_csv), "--out", str(tmp_path), "--resume", *FAST_FLAGS])
    with pytest.raises(SystemExit, match="does not exist"):
        main(args)


def test_unknown_subcommand_is_an_error() -> None:
    from training.__main__ import main

    assert main(["explode"]) == 2


def test_data_skips_short_rows_and_rejects_unknown_labels(tmp_path: Path) -> None:
    from training.data import DataError, load_fer2013

    rows = synthetic_rows()[:10]
    rows.append((3, "1 2 3", "Training"))  # wrong pixel count: skipped with a warning
    with pytest.warns(UserWarning, match="skipped 1 row"):
        data = load_fer2013(write_csv(tmp_path / "short.csv", rows))
    assert data.skipped_rows == 1
    assert len(data.splits["Training"]) == 10
    assert data.splits["Training"].images.shape == (10, 1, 48, 48)
    assert data.splits["Training"].images.dtype == torch.uint8
    assert data.splits["Training"].labels.tolist() == [i % 7 for i in range(10)]

    bad = synthetic_rows()[:5] + [(9, rows[0][1], "Training")]
    with pytest.raises(DataError, match="unknown emotion label"):
        load_fer2013(write_csv(tmp_path / "label.csv", bad))


def test_data_plain_and_gzip_agree(tmp_path: Path) -> None:
    from training.data import load_fer2013

    rows = synthetic_rows()[:20]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = load_fer2013(write_csv(tmp_path / "a.csv", rows), hash_file=False)
        packed = load_fer2013(write_csv(tmp_path / "a.csv.gz", rows, gz=True), hash_file=False)
    assert torch.equal(plain.splits["Training"].images, packed.splits["Training"].images)


def test_train_preset_shapes_and_determinism() -> None:
    from training.presets import EvalPreset, TrainPreset

    images = torch.randint(0, 256, (8, 1, 48, 48), dtype=torch.uint8)
    a = TrainPreset()(images, torch.Generator().manual_seed(1))
    b = TrainPreset()(images, torch.Generator().manual_seed(1))
    assert a.shape == (8, 1, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, b)
    plain = EvalPreset(mean=0.5, std=0.25)(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8))
    assert torch.allclose(plain, torch.full((1, 1, 2, 2), 2.0))


def test_import_torchvision_gives_transforms() -> None:
    from training.torchvision_compat import import_torchvision

    tv = import_torchvision()
    assert hasattr(tv, "transforms")
    from torchvision.transforms import v2

    assert v2.RandomHorizontalFlip(p=1.0)(torch.arange(4.0).view(1, 1, 4)).flatten().tolist() == [3, 2, 1, 0]
    assert import_torchvision() is tv  # idempotent


def test_shipped_model_loads() -> None:
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL.relative_to(REPO)} not shipped yet (train it with python -m training)")
    module, info = load_model(SHIPPED_MODEL)
    assert info.class_names == list(EMOTIONS)
    assert tuple(info.input_size) == (48, 48)
    assert module(torch.zeros(2, 1, 48, 48)).shape == (2, len(EMOTIONS))


class _LeftColumn(torch.nn.Module):
    """Logits that see only the leftmost pixel column, so mirroring a face changes them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = x[:, 0, :, 0].mean(dim=1, keepdim=True)
        return torch.cat([left, -left], dim=1)


def test_flip_tta_averages_the_logits_of_the_face_and_its_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    import emostream.modelfile as modelfile

    module = _LeftColumn()
    x = torch.rand(5, 1, 8, 8)
    expected = (module(x) + module(x.flip(-1))) / 2
    assert not torch.allclose(module(x), expected), "the test input must tell the two apart"
    torch.testing.assert_close(modelfile.forward_with_tta(module, x, "flip"), expected)
    torch.testing.assert_close(modelfile.forward_with_tta(module, x, "none"), module(x))
    # Over MAX_BATCH the face and its mirror go in two passes, with the same result.
    monkeypatch.setattr(modelfile, "MAX_BATCH", 8)
    torch.testing.assert_close(modelfile.forward_with_tta(module, x, "flip"), expected)
    with pytest.raises(ValueError, match="unknown test-time augmentation 'ten_crop'"):
        modelfile.forward_with_tta(module, x, "ten_crop")


def test_served_flip_tta_gives_a_face_and_its_mirror_image_the_same_scores() -> None:
    from classifier.model import EmotionModel

    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"{SHIPPED_MODEL.relative_to(REPO)} not shipped yet (train it with python -m training)")
    crops = np.random.default_rng(0).integers(0, 256, (6, 48, 48), dtype=np.uint8)
    mirrored = np.ascontiguousarray(crops[:, :, ::-1])
    plain = EmotionModel(device="cpu")
    flip = EmotionModel(device="cpu", tta="flip")
    assert np.abs(plain.predict(crops) - plain.predict(mirrored)).max() > 1e-3, "the model alone is not symmetric"
    np.testing.assert_allclose(flip.predict(crops), flip.predict(mirrored), atol=1e-3)
    np.testing.assert_allclose(flip.predict(crops).sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="test-time augmentation"):
        EmotionModel(device="cpu", tta="rotate")


def test_multicrop_tta_averages_ten_shifted_and_mirrored_views() -> None:
    from emostream.modelfile import MULTICROP_SHIFT, forward_with_tta, tta_views

    module = _LeftColumn()
    x = torch.rand(3, 1, 16, 16)
    views = tta_views(x, "multicrop")
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    d = round(16 * MULTICROP_SHIFT)
    # The view shifted right and down by d: row r, column c shows input pixel (r - d, c - d), edges repeated.
    padded = torch.nn.functional.pad(x, (d, d, d, d), mode="replicate")
    torch.testing.assert_close(views[1], padded[..., :16, :16])
    torch.testing.assert_close(views[1][..., d:, d:], x[..., : 16 - d, : 16 - d])
    torch.testing.assert_close(views[5], x.flip(-1))  # the second half mirrors the first
    expected = torch.stack([module(v) for v in views]).mean(0)
    torch.testing.assert_close(forward_with_tta(module, x, "multicrop"), expected)


def test_mixup_and_cutmix_targets_are_the_pixel_shares() -> None:
    from training.presets import MixupCutmix

    labels = torch.tensor([0, 3, 5, 6])
    images = torch.stack([torch.full((1, 8, 8), float(i)) for i in range(4)])  # image i is all i
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        mixed, target = MixupCutmix(7, mixup_alpha=0.4)(images, labels, generator=g)
        # Mixup: image i = lam * i + (1 - lam) * (i - 1), so its value tells lam; targets follow it.
        lam = float(mixed[1, 0, 0, 0] - 0.0)  # image 1 mixed with image 0: lam * 1
        assert 0.0 <= lam <= 1.0
        torch.testing.assert_close(target[1], lam * torch.eye(7)[3] + (1 - lam) * torch.eye(7)[0])
        torch.testing.assert_close(target.sum(1), torch.ones(4))
    for _ in range(20):
        mixed, target = MixupCutmix(7, cutmix_alpha=1.0)(images, labels, generator=g)
        # CutMix: the share of image 2's pixels that came from image 1 is its target's weight on label 3.
        from_partner = float((mixed[2] == 1.0).float().mean())
        assert set(mixed[2].unique().tolist()) <= {1.0, 2.0}
        torch.testing.assert_close(target[2], (1 - from_partner) * torch.eye(7)[5] + from_partner * torch.eye(7)[3])
    unmixed, onehot = MixupCutmix(7, mixup_alpha=0.4, prob=0.0)(images, labels, generator=g)
    assert torch.equal(unmixed, images) and torch.equal(onehot, torch.eye(7)[labels])
    with pytest.raises(ValueError, match="mix probability"):
        MixupCutmix(7, mixup_alpha=0.2, prob=1.5)


def test_mixer_mixes_target_distributions_like_labels() -> None:
    from training.presets import MixupCutmix

    dist = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]])
    images = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(2)])
    mixed, target = MixupCutmix(3, mixup_alpha=0.4)(images, dist, generator=torch.Generator().manual_seed(1))
    lam = float(mixed[1, 0, 0, 0])  # image 1 mixed with image 0: lam * 1
    torch.testing.assert_close(target[1], lam * dist[1] + (1 - lam) * dist[0])


@pytest.mark.parametrize(
    ("flag", "value"), [("--epochs", "-1"), ("--epochs", "0"), ("--ferplus-soft", "1.5"), ("--mix-prob", "-0.1")]
)
def test_out_of_range_options_fail_before_the_data_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    from training.train_args import parse_args

    with pytest.raises(SystemExit) as exit_info:
        # The data path does not exist: the range error must come first.
        parse_args(["--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "out of range" in err and "resume" not in err


def test_memory_format_auto_follows_the_autocast_dtype_and_a_choice_overrides_it() -> None:
    from training.train import memory_format
    from training.train_args import parse_args

    assert memory_format("auto", None) == torch.contiguous_format
    assert memory_format("auto", torch.bfloat16) == torch.channels_last
    assert memory_format("channels-last", None) == torch.channels_last
    assert memory_format("contiguous", torch.bfloat16) == torch.contiguous_format
    assert parse_args(["--data", "d", "--out", "o"]).memory_format == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "o", "--memory-format", "nhwc"])


def test_a_model_learns_the_same_in_either_memory_format() -> None:
    """One training step from the same weights on the same batch: the layout changes the kernels, not
    the result, so a run can change ``--memory-format`` when it resumes."""
    from training.models import build_model

    torch.manual_seed(0)
    images, labels = torch.randn(8, 1, 48, 48), torch.arange(8) % 7
    start = build_model("resnet_fer_tiny").state_dict()
    after = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        model = build_model("resnet_fer_tiny")
        model.load_state_dict(start)
        model = model.to(memory_format=fmt)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(1)  # the same dropout masks
        loss = torch.nn.functional.cross_entropy(model(images.contiguous(memory_format=fmt)), labels)
        loss.backward()
        optimizer.step()
        after[fmt] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    contiguous, channels_last = after.values()
    assert channels_last.keys() == contiguous.keys()
    for name, value in contiguous.items():
        torch.testing.assert_close(channels_last[name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert any(not torch.equal(contiguous[k], start[k]) for k in start)  # the step changed the weights


@pytest.mark.parametrize("mix", [False, True])
def test_the_teachers_view_of_a_batch_gets_the_students_draws_face_for_face(mix: bool) -> None:
    from training.presets import MixupCutmix, TrainPreset
    from training.train import augment_batch

    rng = np.random.default_rng(0)
    served = torch.from_numpy(rng.integers(0, 256, (8, 1, 48, 48), dtype=np.uint8))
    original = torch.from_numpy(rng.integers(0, 256, (8, 1, 48, 48), dtype=np.uint8))
    labels = torch.arange(8) % 7
    transform = TrainPreset(erase=1.0)  # every random step, erasing included, draws for every face
    mixer = MixupCutmix(7, mixup_alpha=0.2, cutmix_alpha=1.0, prob=1.0 if mix else 0.0)
    cpu = torch.device("cpu")

    def alone(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets, none = augment_batch(
            transform, mixer, batch, labels, torch.Generator().manual_seed(5), cpu, torch.contiguous_format
        )
        assert none is None
        return images, targets

    images, targets, teacher = augment_batch(
        transform, mixer, served, labels, torch.Generator().manual_seed(5), cpu, torch.contiguous_format, also=original
    )
    # Each view is exactly what that batch alone would have become with the same seed: same affine,
    # light, erasing, partner and box; the student's targets are the mix's, the labels when unmixed.
    assert torch.equal(images, alone(served)[0]) and torch.equal(targets, alone(served)[1])
    assert teacher is not None and torch.equal(teacher, alone(original)[0])
    assert not torch.equal(teacher, images)
    assert torch.equal(targets, labels) != mix
    # Where a face's served crop is its original (a face the student sees as it was framed), both agree.
    same = served.clone()
    same[:4] = original[:4]
    student, _, teacher = augment_batch(
        transform, mixer, same, labels, torch.Generator().manual_seed(5), cpu, torch.contiguous_format, also=original
    )
    assert teacher is not None
    # Faces 1-3: they and their mixing partners (the face before) are the same in both views.
    assert torch.equal(student[1:4], teacher[1:4]) and not torch.equal(student[4:], teacher[4:])


def test_teacher_view_original_needs_a_teacher_and_served_crops(tmp_path: Path, capsys) -> None:
    from training.train_args import parse_args

    base = ["--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o"), "--teacher-view", "original"]
    for extra in ([], ["--teacher", "t.pt2"], ["--served-crops", "s.npz"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args([*base, *extra])
        assert exit_info.value.code == 2
        assert "--teacher-view original needs --teacher and --served-crops" in capsys.readouterr().err
    args = parse_args([*base, "--teacher", "t.pt2", "--served-crops", "s.npz"])
    assert args.teacher_view == "original"


def test_distillation_loss_matches_a_hand_computation() -> None:
    from training.train import distillation_loss

    student = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    t = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p = np.exp(np.array(t_row) / t) / np.exp(np.array(t_row) / t).sum()
        q = np.exp(np.array(s_row) / t) / np.exp(np.array(s_row) / t).sum()
        expected += float((p * np.log(p / q)).sum())
    expected = expected / 2 * t**2
    assert float(distillation_loss(student, teacher, t)) == pytest.approx(expected, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, t)) == pytest.approx(0.0, abs=1e-6)


def test_a_teacher_file_exported_to_onnx_gives_its_sources_soft_targets(tiny_model: Path, tmp_path: Path) -> None:
    """``--teacher`` takes the model's .onnx file (its int8 copy runs faster on a CPU): it reads the
    student's channels-last batches and gives the logits of the model file it was exported from."""
    import argparse

    from emostream.modelfile import forward_with_tta
    from training.export import export_onnx, exported_info, write_info
    from training.inference import load
    from training.train import distillation_loss, load_teacher

    _, info, path = load(tiny_model)
    onnx_path = export_onnx(path, info, tmp_path / "teacher.onnx", 18)
    write_info(onnx_path, exported_info(info, path, format="onnx-float32"))
    teachers = [
        load_teacher(
            argparse.Namespace(teacher=str(p), teacher_tta="flip", mean=info.mean, std=info.std), torch.device("cpu")
        )
        for p in (tiny_model, onnx_path)
    ]
    images = torch.rand(16, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    batch = ((images - info.mean) / info.std).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        from_pt2, from_onnx = (forward_with_tta(t, batch, "flip").float() for t in teachers)
    assert from_onnx.shape == (16, len(EMOTIONS))
    assert torch.allclose(from_onnx, from_pt2, atol=1e-4, rtol=1e-3)
    student = torch.randn(16, len(EMOTIONS), generator=torch.Generator().manual_seed(1))
    assert float(distillation_loss(student, from_onnx, 4.0)) == pytest.approx(
        float(distillation_loss(student, from_pt2, 4.0)), rel=1e-4
    )
