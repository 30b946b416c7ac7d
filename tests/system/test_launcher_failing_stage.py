"""What a new user trips over, under the real launcher: a stage that keeps dying ends the run with status 1
and one line naming it and its error; a camera that never opens is named in the status lines and the
final summary, with capture's reason."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from support import PYTHON, REPO
from support.pipeline import pipeline_config


def launch(config: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [PYTHON, "-m", "deploy", "run", "--config", str(path), *args],
        cwd=REPO, capture_output=True, text=True, timeout=150,
    )  # fmt: skip


@pytest.mark.timeout(180)
def test_a_sink_that_cannot_bind_ends_the_run_with_status_1_and_one_line_naming_it(tmp_path: Path) -> None:
    config = pipeline_config(
        [{"id": "cam", "source": "demo", "fps": 5}],
        tmp_path,
        supervisor={"restart_backoff_s": 0.05, "restart_backoff_max_s": 0.1, "max_restarts": 2},
    )
    port = int(config["sink"]["publish"].rsplit(":", 1)[1])
    with socket.socket() as holder:  # another program holds the sink's public port for the whole run
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = launch(config, tmp_path)  # no --duration: only the failing sink can end this run
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "deploy ERROR stopped with status 1: sink died 3 times in a row" in last, last
    assert last.endswith(f"its last line: sink: cannot bind publish tcp://127.0.0.1:{port}: "
                         f"Address already in use (addr='tcp://127.0.0.1:{port}')"), last  # fmt: skip
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(180)
def test_a_camera_that_never_opens_is_named_in_the_status_lines_and_the_summary(tmp_path: Path) -> None:
    # No camera device exists on the test machines; on one that has 99 of them, pick another.
    cameras = [{"id": "good", "source": "demo", "fps": 5}, {"id": "lobby", "source": "99"}]
    result = launch(pipeline_config(cameras, tmp_path), tmp_path, "--duration", "20")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    reason = "cannot open: OpenCV cannot open device source '99'"
    assert "status: lobby down for" in log and f"never came up: {reason}" in log, log[-3000:]
    summary = [line.split("summary: ", 1)[1] for line in log.splitlines() if "summary: " in line]
    assert f"lobby never came up (last reported: {reason})" in summary, summary
    assert any(line.startswith("good (after 5 s warm-up): ") for line in summary), summary
    assert not any(line.startswith("good never came up") for line in summary), summary
