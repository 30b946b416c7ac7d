"""Classifier and sink as real processes on real sockets: faces in, validated events out."""

from __future__ import annotations

import subprocess

from support import PYTHON, REPO, free_ports


def test_classifier_refuses_a_file_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "model.pt2"
    bogus.write_bytes(b"this is not a model")
    (a, b) = free_ports(2)
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "classifier",
            "--pull",
            f"tcp://127.0.0.1:{a}",
            "--push",
            f"tcp://127.0.0.1:{b}",
            "--model",
            str(bogus),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not an emostream model" in result.stderr
