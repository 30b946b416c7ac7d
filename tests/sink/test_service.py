"""The sink process's start-up errors: one line each, fatal (status 2, not restarted) when no restart can
help, status 1 (restarted by the launcher) when one can."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sink.service import JsonlWriter, OutputPathError, output_file_problem
from support import free_ports, start_stage


def test_output_file_problem_says_why_a_path_cannot_be_appended_to(tmp_path: Path) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("a file\n")
    assert output_file_problem(tmp_path / "a" / "b" / "events.jsonl") is None  # folders get created
    assert output_file_problem(regular) is None  # appended to
    assert "is not a folder" in (output_file_problem(regular / "x" / "events.jsonl") or "")
    assert "is a folder" in (output_file_problem(tmp_path) or "")
    assert not (tmp_path / "a").exists(), "asking changes nothing"
    with pytest.raises(OutputPathError, match="is not a folder"):
        JsonlWriter(regular / "events.jsonl")


def test_the_sink_exits_fatally_with_one_line_when_its_jsonl_cannot_be_written(tmp_path: Path, processes: list) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("a file\n")
    pull, pub = free_ports(2)
    proc = start_stage(
        "sink", "--pull", f"tcp://127.0.0.1:{pull}", "--publish", f"tcp://127.0.0.1:{pub}",
        "--jsonl", str(regular / "events.jsonl"),
    )  # fmt: skip
    processes.append(proc)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr  # EXIT_FATAL: the launcher does not restart it
    assert "Traceback" not in stderr
    target = regular / "events.jsonl"
    assert stderr.splitlines()[-1] == f"sink: --jsonl: cannot create {target}: {regular} is not a folder"


def test_the_sink_exits_1_with_one_line_when_its_publish_port_is_taken(processes: list) -> None:
    pull, pub = free_ports(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", pub))
        holder.listen()
        proc = start_stage("sink", "--pull", f"tcp://127.0.0.1:{pull}", "--publish", f"tcp://127.0.0.1:{pub}")
        processes.append(proc)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr  # a crash: a port held by a previous run frees up, so restarts may help
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1].startswith(f"sink: cannot bind publish tcp://127.0.0.1:{pub}: ")
