"""Classifier and sink as real processes on real sockets: faces in, validated events out."""

from __future__ import annotations

import subprocess

import pytest

from emostream.wire import CameraEvent, EmotionEvent
from support import PYTHON, REPO, free_ports


def test_subscribe_cli_times_out_with_status_1_when_nothing_arrives():
    (port,) = free_ports(1)
    result = subprocess.run(
        [PYTHON, "-m", "sink.subscribe", "--endpoint", f"tcp://127.0.0.1:{port}", "--count", "1", "--timeout", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "timed out" in result.stderr


def test_frame_gaps_count_missed_events_per_camera_across_reordering_and_restarts():
    from sink.subscribe import FrameGaps

    gaps = FrameGaps()
    for camera, frame in [("a", 2010), ("a", 2012), ("a", 2011), ("a", 2015), ("b", 0), ("b", 1)]:
        gaps.add(EmotionEvent(camera, frame, 1.0, 1.0))
    gaps.add(CameraEvent("a", 1.0, "down", "gone"))  # not a frame: ignored
    assert (gaps.missed("a"), gaps.missed("b"), gaps.missed()) == (2, 0, 2)  # 2013 and 2014; 2011 came late
    for frame in (0, 1, 3):  # camera a restarted: its numbers begin again, the earlier loss is kept
        gaps.add(EmotionEvent("a", frame, 1.0, 1.0))
    assert gaps.missed("a") == 2 + 1


def test_an_endpoint_without_transport_means_tcp_and_a_bad_one_is_one_line():
    from sink.subscribe import events

    pub_port = free_ports(1)[0]
    # HOST:PORT: connects over TCP (nothing publishes there, so it times out with status 1, no traceback).
    ok = subprocess.run(
        [PYTHON, "-m", "sink.subscribe", "--endpoint", f"127.0.0.1:{pub_port}", "--timeout", "0.3"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 1 and ok.stderr.strip() == "subscribe: timed out after 0 event(s)", ok.stderr
    for bad, words in (("localhost", "is not a ZeroMQ endpoint"), ("tcp://nohost:port", "cannot connect")):
        result = subprocess.run(
            [PYTHON, "-m", "sink.subscribe", "--endpoint", bad, "--timeout", "0.3"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and words in result.stderr.splitlines()[-1], result.stderr
    # From Python: the same rule, raised when called, before the first event is awaited.
    assert list(events(f"127.0.0.1:{pub_port}", timeout=0.1)) == []
    with pytest.raises(ValueError, match="is not a ZeroMQ endpoint"):
        events("localhost")
