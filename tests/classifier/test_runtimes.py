"""The classifier's runtimes (classifier/runtimes.py): onnxruntime and OpenVINO on float32 and the shipped
int8 files against torch on real FER2013 faces (../shared), runtime selection and its log line, and the
clear errors."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from classifier.model import EmotionModel
from classifier.runtimes import (
    ONNX_ENGINES,
    OpenVinoProgramRuntime,
    TorchRescoreRuntime,
    TorchRuntime,
    int8_beside,
    near_tie_rescorer,
    one_torch_thread,
    rescore_near_ties,
    select_runtime,
)
from classifier.settings import SHIPPED_ACCURATE_MODEL, SHIPPED_MODEL, ClassifierSettings
from emostream.cpu import cpu_info
from emostream.modelinfo import ModelFileError
from support import PYTHON, REPO, shared_path
from training.data import load_dataset

SHIPPED_INT8 = int8_beside(SHIPPED_MODEL)
#: Every shipped FER2013 model whose int8 file the classifier may serve in its place.
SHIPPED_WITH_INT8 = {"emotion": SHIPPED_MODEL, "emotion_accurate": SHIPPED_ACCURATE_MODEL}
FACES = 1000


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """The first 1,000 PrivateTest faces (uint8 (N, 48, 48)): never used to calibrate or choose the int8 file."""
    data = load_dataset(shared_path("data", "fer2013", "fer2013.csv.gz"), splits=("PrivateTest",), hash_file=False)
    return data.splits["PrivateTest"].images[:FACES, 0].numpy()


@pytest.fixture(scope="module")
def torch_probs(faces: np.ndarray) -> np.ndarray:
    return EmotionModel(device="cpu", bf16=False, runtime="torch").predict(faces)


@pytest.fixture(scope="module")
def float_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export_onnx, exported_info, write_info
    from training.inference import load

    _, info, path = load(SHIPPED_MODEL)
    onnx_path = export_onnx(path, info, tmp_path_factory.mktemp("onnx") / "emotion.onnx", 18)
    write_info(onnx_path, exported_info(info, path, format="onnx-float32"))
    return onnx_path


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(1) == b.argmax(1)).mean())


@pytest.mark.parametrize("engine", list(ONNX_ENGINES))
def test_onnx_engines_on_float32_match_torch_on_real_faces(
    faces: np.ndarray, torch_probs: np.ndarray, float_onnx: Path, engine: str
) -> None:
    served = EmotionModel(float_onnx, runtime=engine, threads=1)
    assert served.runtime.name == engine and served.path == float_onnx and served.device.type == "cpu"
    assert served.runtime.label == f"{engine} fp32"
    probs = served.predict(faces)
    assert agreement(probs, torch_probs) >= 0.999
    assert np.abs(probs - torch_probs).max() < 1e-3


@pytest.fixture(scope="module", params=list(SHIPPED_WITH_INT8))
def int8_probs(request: pytest.FixtureRequest, faces: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A shipped model's float32 probabilities on torch, and its int8 file's on each engine."""
    model = SHIPPED_WITH_INT8[request.param]
    if not int8_beside(model).is_file():
        pytest.skip(f"{int8_beside(model)} is not shipped")
    torch_model = EmotionModel(model, device="cpu", bf16=False, runtime="torch")
    probs = {}
    for engine in ONNX_ENGINES:
        served = EmotionModel(model, device="cpu", runtime=engine, threads=1)
        assert served.path == int8_beside(model) and served.runtime.label == f"{engine} int8"
        # Calibrated probabilities: the int8 file carries the .pt2's temperature.
        assert served.temperature == torch_model.temperature
        assert served.near_tie_gap > 0  # the export recorded where int8's rounding may flip the top class
        probs[engine] = served.predict(faces)
    return torch_model.predict(faces), probs


@pytest.mark.parametrize("engine", list(ONNX_ENGINES))
def test_shipped_int8_agrees_with_torch_on_real_faces(
    int8_probs: tuple[np.ndarray, dict[str, np.ndarray]], engine: str
) -> None:
    # The target; measured figures per file and engine: docs/model.md (int8 serving, the accurate model).
    float_probs, engine_probs = int8_probs
    assert agreement(engine_probs[engine], float_probs) >= 0.99
    assert np.abs(engine_probs[engine] - float_probs).mean() < 0.01


def test_rescore_near_ties_replaces_only_the_rows_whose_top_two_are_close() -> None:
    logits = torch.tensor([[2.0, 1.95, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 1.09]])
    x = torch.arange(3.0)[:, None]
    seen = []

    def forward(near: torch.Tensor) -> torch.Tensor:
        seen.append(near.clone())
        return torch.full((len(near), 3), 7.0)

    out = rescore_near_ties(logits, x, forward, 0.1)
    assert torch.equal(seen[0], torch.tensor([[0.0], [2.0]]))  # rows 0 and 2, nothing else re-run
    assert torch.equal(out[1], logits[1]) and (out[[0, 2]] == 7.0).all()
    assert logits[0, 0] == 2.0  # the caller's logits are left as they were
    seen.clear()
    assert rescore_near_ties(logits, x, forward, 0.0) is logits and not seen


def test_one_torch_thread_for_a_rescore_and_the_count_restored_after_it() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), one_torch_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError("a failed re-score")
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("model", [SHIPPED_MODEL, SHIPPED_ACCURATE_MODEL], ids=["emotion", "emotion_accurate"])
def test_the_near_tie_rescorer_is_the_pt2_in_float32_on_openvino(faces: np.ndarray, model: Path) -> None:
    rescorer, why_not_openvino = near_tie_rescorer(model)
    assert isinstance(rescorer, OpenVinoProgramRuntime) and why_not_openvino == ""
    x = (torch.from_numpy(faces[:64]).unsqueeze(1).float() / 255 - rescorer.info.mean) / rescorer.info.std
    reference = TorchRuntime(model, torch.device("cpu"), bf16=False)(x)
    # The re-score must give float32's answer: the same logits, to float32 rounding, at any batch size.
    for batch in (x[:1], x[:3], x):
        assert torch.allclose(rescorer(batch), reference[: len(batch)], atol=1e-4)
    threads = torch.get_num_threads()
    fallback = TorchRescoreRuntime(model)
    assert torch.allclose(fallback(x[:3]), reference[:3], atol=1e-5) and torch.get_num_threads() == threads


def test_compiling_the_rescorer_sends_no_usage_telemetry(tmp_path: Path) -> None:
    # OpenVINO's converter, left to itself, writes a client id under ~/intel and forks a child to send usage
    # events; the classifier must do neither. A fresh process, so nothing imported here decides it.
    code = (
        "import multiprocessing, sys\n"
        "from pathlib import Path\n"
        "from classifier.runtimes import OpenVinoProgramRuntime\n"
        f"OpenVinoProgramRuntime(Path({str(SHIPPED_MODEL)!r}))\n"
        "print(sys.modules['openvino_telemetry'], len(multiprocessing.active_children()))\n"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("CI", None)  # OpenVINO's telemetry stays quiet in CI by itself; the test is of emostream's opt-out.
    done = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "0"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("engine", list(ONNX_ENGINES))
def test_an_int8_file_that_records_a_near_tie_gap_hands_its_near_ties_to_float32(
    faces: np.ndarray, torch_probs: np.ndarray, tmp_path: Path, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    from training.export import write_info

    if not SHIPPED_INT8.is_file():
        pytest.skip(f"{SHIPPED_INT8} is not shipped")
    model = tmp_path / "emotion.pt2"
    shutil.copyfile(SHIPPED_MODEL, model)
    shutil.copyfile(SHIPPED_INT8, int8_beside(model))
    info = EmotionModel(model, device="cpu", runtime=engine, threads=1).runtime.info
    export = info.extra["export"]

    def record_gap(gap: float) -> None:
        quantization = {**export["quantization"], "near_tie_gap": gap}
        write_info(
            int8_beside(model),
            dataclasses.replace(info, extra={**info.extra, "export": {**export, "quantization": quantization}}),
        )

    record_gap(0.0)  # as int8 files made before the export recorded a gap
    plain = EmotionModel(model, device="cpu", runtime=engine, threads=1)
    plain_probs = plain.predict(faces)
    gap = 0.1
    record_gap(gap)
    with caplog.at_level(logging.INFO, logger="classifier"):
        served = EmotionModel(model, device="cpu", runtime=engine, threads=1)
    assert plain.near_tie_gap == 0 and served.near_tie_gap == gap and served.path == int8_beside(model)
    assert any("near ties (top two logits under 0.1 apart) re-scored by emotion.pt2 in float32 on openvino fp32"
               in r.getMessage() for r in caplog.records)  # fmt: skip
    probs = served.predict(faces)
    # The faces int8 flips are near ties: re-scored, nearly all agree with float32, the rest are int8's as before.
    assert agreement(probs, torch_probs) > agreement(plain_probs, torch_probs)
    assert agreement(probs, torch_probs) >= 0.997
    rescored = np.abs(probs - plain_probs).max(1) > 0
    assert 0 < rescored.mean() < 0.1
    assert np.allclose(probs[rescored], torch_probs[rescored], atol=1e-5)
    # classifier.rescore_near_ties false: the same file served with int8's own ranking, nothing compiled for it.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="classifier"):
        kept = EmotionModel(model, device="cpu", runtime=engine, threads=1, rescore_near_ties=False)
    assert served.rescores_near_ties and not kept.rescores_near_ties and kept.near_tie_gap == gap
    assert any("near ties (top two logits under 0.1 apart) kept as int8 ranks them" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert np.array_equal(kept.predict(faces), plain_probs)


@pytest.mark.parametrize("engine", list(ONNX_ENGINES))
def test_tta_runs_on_the_onnx_engines(faces: np.ndarray, float_onnx: Path, engine: str) -> None:
    torch_flip = EmotionModel(device="cpu", bf16=False, runtime="torch", tta="flip").predict(faces[:200])
    engine_flip = EmotionModel(float_onnx, runtime=engine, tta="flip").predict(faces[:200])
    assert agreement(engine_flip, torch_flip) >= 0.99 and np.abs(engine_flip - torch_flip).max() < 1e-3


@pytest.mark.parametrize("runtime", ["torch", *ONNX_ENGINES])
def test_torch_prepares_an_onnx_engines_batch_on_one_thread_and_serves_its_own_on_its_threads(
    faces: np.ndarray, monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    # torch's idle OpenMP workers spin after each op and would take the cores an ONNX engine's threads need.
    if runtime != "torch" and not SHIPPED_INT8.is_file():
        pytest.skip(f"{SHIPPED_INT8} is not shipped")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        served = EmotionModel(device="cpu", runtime=runtime, threads=2)
        engine = type(served.runtime)
        seen: list[int] = []
        real_call = engine.__call__

        def call(self: Any, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return real_call(self, x)

        monkeypatch.setattr(engine, "__call__", call)
        served.predict(faces[:64])
        assert seen == ([2] if runtime == "torch" else [1])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_auto_times_the_candidates_and_logs_one_line_naming_the_winner(caplog: pytest.LogCaptureFixture) -> None:
    if not SHIPPED_INT8.is_file():
        pytest.skip(f"{SHIPPED_INT8} is not shipped")
    with caplog.at_level(logging.INFO, logger="classifier"):
        model = EmotionModel(device="cpu", runtime="auto", threads=1, batch=16)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("runtime ")]
    assert len(lines) == 1
    line = lines[0]
    assert f"runtime {model.runtime.label} serves {model.path}" in line
    assert model.path in (SHIPPED_MODEL, SHIPPED_INT8)
    assert "auto, fastest at batch 16 on 1 threads" in line
    # Torch serves bf16 where the CPU has it in hardware (EmotionModel's bf16 auto), else float32.
    torch_label = "torch bf16" if cpu_info().native_bf16 else "torch fp32"
    assert set(model.selection.measured) == {
        f"{torch_label} (emotion.pt2)",
        "onnxruntime int8 (emotion.int8.onnx)",
        "openvino int8 (emotion.int8.onnx)",
    }
    assert all(rate > 0 for rate in model.selection.measured.values())
    for label in model.selection.measured:
        assert f"{label} " in line and "faces/s" in line
    assert model.selection.measured[f"{model.runtime.label} ({model.path.name})"] == max(
        model.selection.measured.values()
    )


def test_forced_runtimes_and_the_served_file(tmp_path: Path) -> None:
    torch_model = EmotionModel(device="cpu", runtime="torch")
    assert torch_model.runtime.name == "torch" and torch_model.path == SHIPPED_MODEL
    assert torch_model.selection.describe().endswith("(classifier.runtime torch)")
    # No int8 file beside a .pt2: auto serves torch and says why.
    alone = tmp_path / "alone.pt2"
    shutil.copyfile(SHIPPED_MODEL, alone)
    selection = select_runtime(alone, "auto")
    assert selection.runtime.name == "torch" and "no alone.int8.onnx beside alone.pt2" in selection.describe()


def test_classifier_runtime_names_every_onnx_engine_and_nothing_else() -> None:
    from typing import get_args

    from classifier.settings import RUNTIMES
    from emostream.onnxmodel import ENGINES, EngineName

    assert set(ONNX_ENGINES) == set(ENGINES) == set(get_args(EngineName))
    assert all(ONNX_ENGINES[name].name == ENGINES[name].name == name for name in ENGINES)
    assert set(RUNTIMES) == {"auto", "torch", *ENGINES}


def test_bad_runtime_missing_and_stale_int8_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classifier.runtime: unknown runtime 'tensorrt'"):
        EmotionModel(device="cpu", runtime="tensorrt")
    with pytest.raises(ValidationError, match="runtime"):
        ClassifierSettings(runtime="tensorrt")
    assert ClassifierSettings().runtime == "auto"

    alone = tmp_path / "alone.pt2"
    shutil.copyfile(SHIPPED_MODEL, alone)
    for engine in ONNX_ENGINES:
        with pytest.raises(
            ModelFileError, match=rf"runtime {engine}: no int8 file .*alone\.int8\.onnx beside alone\.pt2; make it with"
        ):
            EmotionModel(alone, device="cpu", runtime=engine)

    if not SHIPPED_INT8.is_file():
        pytest.skip(f"{SHIPPED_INT8} is not shipped")
    # An int8 file beside a .pt2 it was not made from: refused when forced, left out (and said) by auto.
    other = tmp_path / "other.pt2"
    shutil.copyfile(SHIPPED_MODEL.with_name("emotion_ferplus.pt2"), other)
    shutil.copyfile(SHIPPED_INT8, int8_beside(other))
    for engine in ONNX_ENGINES:
        with pytest.raises(ModelFileError, match="was not exported from"):
            EmotionModel(other, device="cpu", runtime=engine)
    selection = select_runtime(other, "auto")
    assert selection.runtime.name == "torch"
    for engine in ONNX_ENGINES:
        assert f"{engine} on other.int8.onnx left out" in selection.describe()

    with pytest.raises(ModelFileError, match="torch serves .pt2 files"):
        EmotionModel(SHIPPED_INT8, device="cpu", runtime="torch")
