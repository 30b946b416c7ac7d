"""capture/sources.py against real servers: an RTSP camera's transport (tcp or udp) reaches FFmpeg, as
the RTSP server sees it in the client's SETUP request."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from capture.settings import CameraSettings
from capture.sources import FFMPEG_OPTIONS_ENV, SourceKind, VideoCaptureSource, ffmpeg_capture_options
from support.rtsp_server import RtspServer, faces_rtsp_server


@pytest.fixture
def rtsp_server(tmp_path) -> Iterator[RtspServer]:
    with faces_rtsp_server(tmp_path) as server:
        yield server


def test_ffmpeg_options_name_the_transport_and_keep_the_users_own() -> None:
    assert ffmpeg_capture_options(None, "udp") == "rtsp_transport;udp"
    assert ffmpeg_capture_options("", "tcp") == "rtsp_transport;tcp"
    users = "stimeout;5000000|rtsp_transport;udp|buffer_size;1048576"
    assert ffmpeg_capture_options(users, "tcp") == "stimeout;5000000|buffer_size;1048576|rtsp_transport;tcp"


def test_a_camera_uses_tcp_unless_its_settings_say_udp() -> None:
    assert CameraSettings(id="a", source="rtsp://10.0.0.5/stream1").rtsp_transport == "tcp"
    assert CameraSettings(id="a", source="rtsp://10.0.0.5/stream1", rtsp_transport="udp").rtsp_transport == "udp"


@pytest.mark.parametrize(("transport", "asked"), [("tcp", "RTP/AVP/TCP"), ("udp", "RTP/AVP/UDP")])
def test_the_rtsp_transport_reaches_ffmpeg_and_frames_arrive(
    rtsp_server: RtspServer, transport: str, asked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A user's own FFmpeg options stay in force, and stay theirs once the camera has opened.
    monkeypatch.setenv(FFMPEG_OPTIONS_ENV, "analyzeduration;2000000")
    source = VideoCaptureSource(rtsp_server.url, SourceKind.URL, rtsp_transport=transport)  # type: ignore[arg-type]
    source.open()
    try:
        frames = [source.retrieve() for _ in range(10) if source.grab()]
    finally:
        source.close()
    assert len(frames) == 10 and all(f is not None and f.shape == (720, 1280, 3) for f in frames)
    transports = rtsp_server.transports()
    assert transports and all(t.startswith(asked + ";") for t in transports), transports
    assert os.environ[FFMPEG_OPTIONS_ENV] == "analyzeduration;2000000"
    assert source.self_paced, "a live RTSP stream (no length) paces itself"


def test_options_of_other_urls_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FFMPEG_OPTIONS_ENV, raising=False)
    http = VideoCaptureSource("http://127.0.0.1:9/video.mjpg", SourceKind.URL, rtsp_transport="udp")
    rtsp = VideoCaptureSource("rtsp://127.0.0.1:9/live", SourceKind.URL, rtsp_transport="udp")
    with http.ffmpeg_options() as options:
        assert options is None and FFMPEG_OPTIONS_ENV not in os.environ
    with rtsp.ffmpeg_options() as options:
        assert options == os.environ[FFMPEG_OPTIONS_ENV] == "rtsp_transport;udp"
    assert FFMPEG_OPTIONS_ENV not in os.environ
