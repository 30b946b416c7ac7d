"""Fixtures for the system tests: the classifier and the sink as real processes on real sockets."""

from __future__ import annotations

import subprocess

import pytest

from support import PYTHON, REPO, free_ports


@pytest.fixture
def classifier_and_sink(tiny_model, tmp_path):
    faces_port, events_in_port, pub_port, cls_metrics, sink_metrics = free_ports(5)
    jsonl = tmp_path / "events.jsonl"
    procs = [
        subprocess.Popen(
            [
                PYTHON,
                "-m",
                "sink",
                "--pull",
                f"tcp://127.0.0.1:{events_in_port}",
                "--publish",
                f"tcp://127.0.0.1:{pub_port}",
                "--jsonl",
                str(jsonl),
                "--metrics-port",
                str(sink_metrics),
            ],
            cwd=REPO,
        ),
        subprocess.Popen(
            [
                PYTHON,
                "-m",
                "classifier",
                "--pull",
                f"tcp://127.0.0.1:{faces_port}",
                "--push",
                f"tcp://127.0.0.1:{events_in_port}",
                "--model",
                str(tiny_model),
                "--max-batch",
                "8",
                "--max-wait-ms",
                "20",
                "--metrics-port",
                str(cls_metrics),
            ],
            cwd=REPO,
        ),
    ]
    yield {
        "faces": faces_port,
        "pub": pub_port,
        "cls_metrics": cls_metrics,
        "sink_metrics": sink_metrics,
        "jsonl": jsonl,
        "procs": procs,
    }
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)
