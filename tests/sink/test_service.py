"""The sink process: its start-up errors (one line each, fatal (status 2, not restarted) when no restart can
help, status 1 (restarted by the launcher) when one can), and what a subscriber that joins late learns."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import zmq

from emostream.wire import CameraEvent, EmotionEvent, camera_event, decode_event, encode_event
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


def _receive(sub: zmq.Socket, seconds: float) -> list:
    events, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sub.poll(int(left * 1000)):
            events.append(decode_event(sub.recv_multipart()))
    return events


def _subscriber(context: zmq.Context, port: int, topic: bytes = b"") -> zmq.Socket:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(f"tcp://127.0.0.1:{port}")
    return sub


def test_a_late_subscriber_is_sent_each_cameras_last_state_and_no_old_frames(processes: list) -> None:
    pull, pub = free_ports(2)
    processes.append(start_stage("sink", "--pull", f"tcp://127.0.0.1:{pull}", "--publish", f"tcp://127.0.0.1:{pub}"))
    context = zmq.Context.instance()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://127.0.0.1:{pull}")
    early = _subscriber(context, pub)
    sent = [
        camera_event("door", "up", "delivering frames", ts_event=1.0),
        EmotionEvent("door", 0, 1.0, 1.1),
        camera_event("lobby", "down", "cannot open: no such device", ts_event=2.0),
        camera_event("door", "down", "stopped delivering frames", ts_event=3.0),
    ]
    seen: list = []
    for _ in range(300):  # until the sink runs and the early subscriber is joined: it sees the live stream
        push.send_multipart(encode_event(sent[0]))
        seen = _receive(early, 0.1)
        if seen:
            break
    assert seen, "the sink published nothing within 30 s"
    for event in sent[1:]:
        push.send_multipart(encode_event(event))
    live = _receive(early, 1.0)
    assert live[-3:] == sent[1:], live

    late = _subscriber(context, pub)
    states = _receive(late, 1.5)
    assert sorted(states, key=lambda e: e.camera) == [sent[3], sent[2]], states  # the last state per camera only
    lobby_only = _subscriber(context, pub, b"lobby")
    assert _receive(lobby_only, 1.5) == [sent[2]]  # a topic filter holds for the states too
    # Those already listening get the states again on each new subscription: a state, not a change.
    again = _receive(early, 0.5)
    assert again and all(isinstance(event, CameraEvent) for event in again), again
    for sock in (push, early, late, lobby_only):
        sock.close()
