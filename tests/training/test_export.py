"""``python -m training export --quantize int8``: the shipped model quantised on a small CSV of real FER2013
faces (../shared), its metadata, where it is written, what it refuses, and ``evaluate`` on the ``.onnx``.
The float32 export's parity is tests/system/test_training_cli_runs.py."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from emostream.modelfile import load_model
from emostream.onnxmodel import read_onnx_info
from support import shared_path
from support.training import run_in_process, write_splits_csv
from training.data import load_dataset
from training.inference import shipped_model_path

# Small, so the test runs in seconds: real faces, the first of each split.
FACES = {"Training": 256, "PublicTest": 448, "PrivateTest": 64}


@pytest.fixture(scope="module")
def real_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = load_dataset(shared_path("data", "fer2013", "fer2013.csv.gz"), hash_file=False)
    splits = {
        name: (data.splits[name].images[:n, 0].numpy(), data.splits[name].labels[:n].numpy())
        for name, n in FACES.items()
    }
    return write_splits_csv(splits, tmp_path_factory.mktemp("fer") / "fer_small.csv.gz")


@pytest.fixture(scope="module")
def int8_export(real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, str, Path]:
    from training.export import cli

    out = tmp_path_factory.mktemp("export")
    args = ["--model", str(shipped_model_path()), "--quantize", "int8", "--data", str(real_csv), "--out", str(out)]
    args += ["--calibration-size", "128", "--calibration-methods", "MinMax", "Percentile", "--batch-sizes", "1", "64"]
    args += ["--weight-schemes", "s8-7bit", "u8"]
    args += ["--max-accuracy-drop", "2"]  # 448 faces: one face is 0.22 points
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = cli(args)
    return status, json.loads(stdout.getvalue()), stderr.getvalue(), out


def test_int8_export_writes_a_self_describing_file_in_out(int8_export: tuple[int, dict, str, Path]) -> None:
    status, result, err, out = int8_export
    assert status == 0, err
    model = shipped_model_path()
    path = out / "emotion.int8.onnx"
    assert Path(result["onnx"]) == path and path.is_file()
    assert result["quantize"] == "int8" and result["float_parity"]["ok"]
    # Far smaller than the float file: int8 weights.
    assert result["onnx_bytes"] < model.stat().st_size / 2

    info = read_onnx_info(path)
    _, torch_info = load_model(model)
    assert info.class_names == torch_info.class_names and info.temperature == torch_info.temperature
    assert info.tta_temperatures == torch_info.tta_temperatures and info.metrics == torch_info.metrics
    export = info.extra["export"]
    assert export["source"] == "emotion.pt2"
    assert export["source_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    q = export["quantization"]
    assert q["calibration"]["split"] == "Training" and q["calibration"]["faces"] == 128
    assert q["chosen_on"] == "PublicTest" and q["chosen_by"] == "agreement"
    assert set(q["trials"]) == {f"{w}/{m}" for w in ("s8-7bit", "u8") for m in ("MinMax", "Percentile")}
    trials = q["trials"]
    best = max(trials, key=lambda t: (trials[t]["publictest_argmax_agreement"], trials[t]["publictest_accuracy"]))
    assert best == f"{q['weight_scheme']}/{q['calibration']['method']}"
    assert len(q["float_nodes"]) == 2  # the first convolution and the logits' linear layer
    near = q["near_ties"]
    assert q["near_tie_gap"] == near["gap"] >= 0 and near["target"] == 0.997
    assert near["agreement_before"] == pytest.approx(q["publictest_argmax_agreement"])
    assert near["agreement_after"] >= min(0.997, near["agreement_before"]) and "int8 near ties:" in err
    assert "int8 OK" in err


def test_the_near_tie_gap_is_the_smallest_that_brings_agreement_to_its_target() -> None:
    from training.export import near_tie_threshold

    float_logits = np.array([[1.0, 0.0, 0.0]] * 10)
    int8_logits = float_logits.copy()
    int8_logits[0] = [1.0, 1.02, 0.0]  # flipped, int8 gap 0.02
    int8_logits[1] = [1.0, 1.07, 0.0]  # flipped, int8 gap 0.07
    int8_logits[2] = [1.0, 0.96, 0.0]  # agrees, gap 0.04: re-scored with the rest under 0.07
    got = near_tie_threshold(int8_logits, float_logits, 1.0)
    assert got["gap"] == pytest.approx(0.075) and got["rescored_share"] == pytest.approx(0.3)
    assert got["agreement_before"] == pytest.approx(0.8) and got["agreement_after"] == 1.0
    assert near_tie_threshold(int8_logits, float_logits, 0.9)["gap"] == pytest.approx(0.025)
    assert near_tie_threshold(int8_logits, float_logits, 0.0)["gap"] == 0.0  # re-scoring off


def test_an_int8_file_that_fails_its_accuracy_check_is_not_left_where_the_classifier_serves_it(
    real_csv: Path, tmp_path: Path
) -> None:
    from training.export import cli

    served = tmp_path / "emotion.int8.onnx"
    served.write_bytes(b"an earlier export")
    args = ["--model", str(shipped_model_path()), "--quantize", "int8", "--data", str(real_csv), "--out", str(tmp_path)]
    args += ["--calibration-size", "64", "--calibration-methods", "MinMax", "--weight-schemes", "s8-7bit"]
    args += ["--batch-sizes", "1", "--max-accuracy-drop", "-50"]  # int8 would have to gain 50 points
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = cli(args)
    err = stderr.getvalue()
    assert status == 1 and "int8 FAILED" in err, err
    failed = tmp_path / "emotion.int8.failed.onnx"
    assert json.loads(stdout.getvalue())["onnx"] == str(failed) and str(failed) in err
    assert read_onnx_info(failed).extra["export"]["quantization"]["weight_scheme"] == "s8-7bit"
    assert served.read_bytes() == b"an earlier export"


def test_int8_export_agrees_with_torch_on_real_faces(int8_export: tuple[int, dict, str, Path]) -> None:
    status, result, err, _ = int8_export
    assert status == 0, err
    # The first 64 PrivateTest faces: never used to calibrate or choose.
    assert "PrivateTest" in result["parity_inputs"] and result["parity"]["batch_sizes"] == [1, 64]
    assert result["parity"]["argmax_agreement"] >= 0.95
    q = result["quantization"]
    assert abs(q["publictest_accuracy"] - q["float_publictest_accuracy"]) <= 0.02


def test_evaluate_accepts_the_onnx_file(
    int8_export: tuple[int, dict, str, Path], real_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, result, _, out = int8_export
    int8 = out / "emotion.int8.onnx"
    args = ["evaluate", "--data", str(real_csv), "--split", "PublicTest"]
    status, metrics, err = run_in_process(capsys, *args, "--model", str(int8))
    assert status == 0, err
    assert metrics["model"]["path"] == str(int8) and metrics["n"] == FACES["PublicTest"]
    # The same figure export chose the calibration by.
    assert metrics["accuracy"] == pytest.approx(result["quantization"]["publictest_accuracy"], abs=1e-9)
    assert metrics["model"]["engine"] == "onnxruntime"
    status, flip, err = run_in_process(capsys, *args, "--model", str(int8), "--tta", "flip")
    assert status == 0, err
    assert flip["model"]["tta"] == "flip" and flip["n"] == FACES["PublicTest"]
    # The classifier's other engine scores the same file: its own int8 kernels, so near, not equal.
    status, openvino, err = run_in_process(capsys, *args, "--model", str(int8), "--engine", "openvino")
    assert status == 0, err
    assert openvino["model"]["engine"] == "openvino" and openvino["n"] == FACES["PublicTest"]
    assert openvino["accuracy"] == pytest.approx(metrics["accuracy"], abs=0.03)


def test_int8_export_needs_data_and_other_commands_refuse_onnx(
    int8_export: tuple[int, dict, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["export", "--model", str(shipped_model_path()), "--quantize", "int8", "--out", str(tmp_path)]
    status, _, err = run_in_process(capsys, *args)
    assert status == 1
    assert "--quantize int8 needs --data" in err and err.count("\n") == 1
    assert not (tmp_path / "emotion.int8.onnx").exists()

    int8 = int8_export[3] / "emotion.int8.onnx"
    status, _, err = run_in_process(capsys, "calibrate", "--model", str(int8), "--data", "unused.csv")
    assert status == 1 and "is an ONNX export" in err


def test_onnx_file_without_model_info_is_refused(tmp_path: Path) -> None:
    import onnx

    from emostream.modelinfo import ModelFileError

    bare = tmp_path / "bare.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["input"], ["logits"])],
        "g",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 7])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 7])],
    )
    onnx.save(onnx.helper.make_model(graph), str(bare))
    with pytest.raises(ModelFileError, match="no emostream.json"):
        load_model(bare)
    (tmp_path / "junk.onnx").write_bytes(np.arange(100, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFileError, match="not an ONNX model file"):
        read_onnx_info(tmp_path / "junk.onnx")
