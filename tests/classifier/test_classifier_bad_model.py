"""Broken model files: truncated, with broken metadata, with outputs or classes that do not match. The
classifier must refuse each with one clear error naming the file and exit code 2 (no restart can fix it).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from classifier.settings import SHIPPED_MODEL
from emostream.modelfile import load_model, save_model
from emostream.modelinfo import INFO_FILE, ModelFileError, ModelInfo
from emostream.wire import (
    EMOTIONS,
)
from support import (
    PYTHON,
    REPO,
    free_ports,
)

# ------------------------------------------------------------------------------------------------
# broken model files
# ------------------------------------------------------------------------------------------------


def run_classifier(model: Path) -> subprocess.CompletedProcess:
    """``python -m classifier --model MODEL`` on CPU, until it exits (a bad model: at once)."""
    a, b = free_ports(2)
    return subprocess.run(
        [PYTHON, "-m", "classifier", "--pull", f"tcp://127.0.0.1:{a}", "--push", f"tcp://127.0.0.1:{b}",
         "--model", str(model), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_classifier_refuses_a_truncated_real_model_file_with_exit_2_naming_it(tmp_path: Path) -> None:
    truncated = tmp_path / "emotion.pt2"
    data = SHIPPED_MODEL.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    result = run_classifier(truncated)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("classifier: ") and str(truncated) in last and "not an emostream model file" in last
    assert_only_the_verdict(result.stderr)


def assert_only_the_verdict(stderr: str) -> None:
    """The start-up line and the classifier's one-line verdict: no warning or traceback of torch's."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and "cpu budget" in lines[0] and lines[1].startswith("classifier: "), stderr


def test_classifier_refuses_a_file_that_is_no_model_in_one_line_without_torch_warnings(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("remember to buy milk\n")
    # A zip archive whose central directory is garbage: torch opens it and fails, and must stay quiet.
    data = SHIPPED_MODEL.read_bytes()
    corrupt = tmp_path / "corrupt.pt2"
    corrupt.write_bytes(data[: len(data) // 2] + b"x" * 100 + data[-2000:])
    for path in (notes, corrupt):
        result = run_classifier(path)
        assert result.returncode == 2, result.stderr
        assert_only_the_verdict(result.stderr)
        assert f"classifier: {path} is not an emostream model file" in result.stderr


def model_with_info(tiny_model: Path, info_text: str, path: Path) -> Path:
    """A real exported model (tiny_model's program) whose emostream.json is ``info_text``."""
    import torch

    program = torch.export.load(tiny_model)
    torch.export.save(program, path, extra_files={INFO_FILE: info_text})
    return path


GOOD_INFO = json.loads(ModelInfo(arch="tiny-test-cnn", class_names=list(EMOTIONS)).to_json())
BROKEN_INFO = {
    "not-json": "{this is not json",
    "not-an-object": "[1, 2, 3]",
    "missing-keys": json.dumps({"format": GOOD_INFO["format"]}),
    "wrong-types": json.dumps({**GOOD_INFO, "class_names": 7, "input_size": "big"}),
}


@pytest.mark.parametrize("case", sorted(BROKEN_INFO))
def test_a_model_file_with_broken_metadata_is_a_model_file_error(case: str, tiny_model: Path, tmp_path: Path) -> None:
    path = model_with_info(tiny_model, BROKEN_INFO[case], tmp_path / f"{case}.pt2")
    with pytest.raises(ModelFileError, match=re.escape(str(path))):
        load_model(path)


def test_classifier_refuses_a_model_file_with_broken_metadata_with_exit_2(tiny_model: Path, tmp_path: Path) -> None:
    path = model_with_info(tiny_model, BROKEN_INFO["not-json"], tmp_path / "broken.pt2")
    result = run_classifier(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


def tiny_model_file(path: Path, outputs: int, class_names: list[str]) -> Path:
    """An untrained model file with ``outputs`` scores per face named ``class_names``."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, outputs))
    return save_model(net, ModelInfo(arch="tiny-test-cnn", class_names=class_names), path)


def test_a_model_whose_outputs_do_not_match_its_class_names_is_refused(tmp_path: Path) -> None:
    from classifier.model import EmotionModel

    # The event schema's seven names over two outputs: the names pass, the outputs do not.
    path = tiny_model_file(tmp_path / "m.pt2", 2, list(EMOTIONS))
    with pytest.raises(ModelFileError, match="2 outputs for 7 class names"):
        EmotionModel(path, device="cpu")


#: Seven classes, as the event schema, but other names or another order: every event would be refused.
OTHER_CLASS_NAMES = {
    "other-names": ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "contempt"],
    "other-order": sorted(EMOTIONS),
}


@pytest.mark.parametrize("case", sorted(OTHER_CLASS_NAMES))
def test_classifier_refuses_a_model_whose_classes_differ_from_the_event_schema_with_exit_2(
    case: str, tmp_path: Path
) -> None:
    names = OTHER_CLASS_NAMES[case]
    path = tiny_model_file(tmp_path / "m.pt2", len(names), names)
    assert load_model(path)[1].class_names == names  # a valid model file: only the classes are wrong
    result = run_classifier(path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert_only_the_verdict(result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"classifier: {path}: the model's classes {names}") and "event schema" in last
