"""Configs of the wrong shape, with non-finite numbers, an unwritable output or a malformed endpoint: the
error names the offending key."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.config import ConfigError, parse_config
from support import PYTHON, REPO

# ------------------------------------------------------------------------------------------------
# configs the existing tests (test_config.py) do not cover
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ([{"cameras": []}], "the top level must be a mapping"),
        (None, "the top level must be a mapping"),
        ("cameras", "the top level must be a mapping"),
        ({"cameras": 5}, "cameras"),
        ({"cameras": [{"id": "a", "source": "demo", "fps": float("nan")}]}, "cameras[0].fps"),
        ({"cameras": [{"id": "a", "source": "demo"}], "detector": {"workers": float("inf")}}, "detector.workers"),
        ({"cameras": [{"id": "a", "source": ["demo"]}]}, "cameras[0].source"),
        ({"cameras": [{"id": "a", "source": "demo", "resize": [0, 0]}]}, "cameras[0].resize"),
        ({"cameras": [{"id": "a", "source": "demo", "resize": [100000, 10]}]}, "cameras[0].resize"),
    ],
    ids=["list", "empty-file", "scalar", "cameras-not-a-list", "nan-fps", "inf-workers", "source-a-list",
         "resize-zero", "resize-absurd"],
)  # fmt: skip
def test_a_config_of_the_wrong_shape_or_with_non_finite_numbers_names_the_problem(data: object, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "bad.yaml")
    assert f"bad.yaml: {key}" in str(info.value)


def test_an_infinite_camera_fps_is_refused_by_the_config() -> None:
    with pytest.raises(ConfigError, match=re.escape("bad.yaml: cameras[0].fps")):
        parse_config({"cameras": [{"id": "a", "source": "demo", "fps": float("inf")}]}, "bad.yaml")


# ------------------------------------------------------------------------------------------------
# output paths and endpoints the stages would only trip over once running
# ------------------------------------------------------------------------------------------------


def demo(**sections: object) -> dict:
    return {"cameras": [{"id": "a", "source": "demo"}], **sections}


def test_a_sink_jsonl_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("a file, not a folder\n")
    for bad, why in ((regular / "events.jsonl", "is not a folder"), (tmp_path, "is a folder")):
        with pytest.raises(ConfigError) as info:
            parse_config(demo(sink={"jsonl": str(bad)}), "bad.yaml")
        assert str(info.value).startswith("bad.yaml: sink.jsonl: ") and why in str(info.value)
    # A new file in folders still to be created is fine: the sink creates them, as it always did.
    parse_config(demo(sink={"jsonl": str(tmp_path / "new" / "deeper" / "events.jsonl")}), "ok.yaml")
    assert not (tmp_path / "new").exists(), "checking a config creates nothing"


@pytest.mark.parametrize("command", ["check", "run"])
def test_deploy_check_and_run_refuse_an_unwritable_sink_jsonl_in_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(demo(sink={"jsonl": "notes.txt/events.jsonl"})))
    # Relative to the working directory, where the sink would run.
    duration = ["--duration", "30"] if command == "run" else []
    result = subprocess.run(
        [PYTHON, "-m", "deploy", command, "--config", str(config), *duration],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"config error: {config}: sink.jsonl: cannot create notes.txt/events.jsonl: "
                     f"{tmp_path / 'notes.txt'} is not a folder"]  # fmt: skip
    assert "started" not in result.stdout + result.stderr, "no stage may start"


@pytest.mark.parametrize(
    ("publish", "expected"),
    [("127.0.0.1:5561", "tcp://127.0.0.1:5561"), ("*:5561", "tcp://*:5561"), ("ipc:///tmp/x", "ipc:///tmp/x")],
)
def test_a_publish_endpoint_without_transport_means_tcp(publish: str, expected: str) -> None:
    assert parse_config(demo(sink={"publish": publish}), "ok.yaml").sink.publish == expected


@pytest.mark.parametrize("publish", ["localhost", "127.0.0.1:99999", "bogus://x", "tcp://"])
def test_a_publish_value_that_is_no_endpoint_names_the_key(publish: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("bad.yaml: sink.publish: ")):
        parse_config(demo(sink={"publish": publish}), "bad.yaml")
