"""One camera's settings: the only copy of their defaults, limits and meanings.

``python -m capture`` takes its options from :class:`CameraSettings` (``emostream.settings_cli``), and the
launcher config's ``cameras`` entries are :class:`CameraSettings` (``deploy.config.CameraConfig``).
Where the frames go (endpoints, shared memory) is the pipeline's business, not the camera's.
"""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from capture.sources import DEFAULT_DECODE_THREADS, DEFAULT_RTSP_TRANSPORT, RtspTransport, SourceKind, classify_source
from capture.stream import parse_size
from emostream.settings_cli import Cli
from emostream.wire import DEFAULT_JPEG_QUALITY, camera_id_error

Side = Annotated[int, Field(ge=16, le=8192)]


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _format_size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class CameraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    id: Annotated[str, Field(description="camera id, used in every message and metric"), Cli(flag="--camera")]
    source: Annotated[
        str | int,
        Field(
            description="'demo' (a synthetic camera), a camera index (0), a video file, "
            "a URL (rtsp://, http://...), or 'webrtc' (a browser's webcam, through the webrtc_ingest page)"
        ),
    ]
    loop: Annotated[bool, Field(description="restart a video file when it ends")] = False
    start_s: Annotated[
        float,
        Field(
            ge=0,
            allow_inf_nan=False,
            description="video files: start this many seconds in (a looping file's later passes start at 0)",
        ),
        Cli(metavar="SECONDS"),
    ] = 0.0
    pacing: Annotated[
        Literal["realtime", "fast"],
        Field(
            description="files, demo and VOD URLs: at their frame rate (realtime) or as fast as possible (fast); "
            "cameras and live streams pace themselves"
        ),
    ] = "realtime"
    fps: Annotated[
        float | None,
        Field(gt=0, allow_inf_nan=False, description="send at most this many frames per second (others are skipped)"),
    ] = None
    resize: Annotated[
        tuple[Side, Side] | None,
        Field(description="resize frames to WxH before sending"),
        Cli(metavar="WxH", parse=_size, format=_format_size),
    ] = None
    drop_policy: Annotated[
        Literal["drop_oldest", "block"] | None,
        Field(description="when detectors lag: drop_oldest (default for live sources) or block (default for files)"),
    ] = None
    encoding: Annotated[
        Literal["bgr", "jpeg"],
        Field(
            description="how frames travel to workers on other machines (bgr raw, jpeg); workers on this machine "
            "read them from shared memory"
        ),
    ] = "bgr"
    jpeg_quality: Annotated[int, Field(ge=1, le=100, description="JPEG quality, with jpeg"), Cli(metavar="Q")] = (
        DEFAULT_JPEG_QUALITY
    )
    decode_threads: Annotated[
        int,
        Field(ge=0, le=64, description="FFmpeg decoder threads for files and streams; 0: FFmpeg's choice"),
        Cli(metavar="N"),
    ] = DEFAULT_DECODE_THREADS
    rtsp_transport: Annotated[
        RtspTransport,
        Field(
            description="rtsp:// sources: RTP inside the RTSP TCP connection (tcp) or as UDP datagrams (udp); "
            "other sources ignore it"
        ),
    ] = DEFAULT_RTSP_TRANSPORT

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        problem = camera_id_error(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _start_only_in_files(self) -> CameraSettings:
        if self.start_s and not self.is_file:
            raise ValueError(f"start_s: only a video file can start {self.start_s:g} s in, not {self.source!r}")
        return self

    @property
    def is_file(self) -> bool:
        return classify_source(str(self.source)) is SourceKind.FILE

    @property
    def is_webrtc(self) -> bool:
        return classify_source(str(self.source)) is SourceKind.WEBRTC
