"""A detector worker's settings: the only copy of their defaults, limits and meanings.

``python -m detector`` takes its options from :class:`DetectorSettings` (``emostream.settings_cli``), and
the launcher config's ``detector`` section embeds it (``deploy.config.DetectorConfig``, which adds how
many workers to start).
"""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from emostream.settings_cli import Cli


def parse_angles(text: str) -> tuple[float, ...]:
    """``"30,-30"`` -> ``(30.0, -30.0)``; ``""`` or ``"none"`` -> ``()``."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of angles in degrees") from None


def format_angles(angles: tuple[float, ...]) -> str:
    return ",".join(f"{a:g}" for a in angles) or "none"


#: The face detectors ``detector.backend`` may name.
DetectorBackend = Literal["haar", "yunet"]
#: What runs YuNet's network: ONNX Runtime (detector/yunet.py) or OpenCV's ``cv2.FaceDetectorYN``.
YuNetRuntime = Literal["onnxruntime", "opencv"]


class DetectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    backend: Annotated[DetectorBackend, Field(description="face detector")] = "yunet"
    model: Annotated[str | None, Field(description="YuNet .onnx file; unset: the one shipped in detector/models")] = (
        None
    )
    runtime: Annotated[
        YuNetRuntime,
        Field(description="what runs YuNet: onnxruntime (faster on CPUs) or opencv (cv2.FaceDetectorYN); same faces"),
    ] = "onnxruntime"
    align: Annotated[
        bool,
        Field(description="upright crops framed like FER2013 from YuNet's landmarks (Haar: square box crops)"),
    ] = True
    roll_passes: Annotated[
        tuple[Annotated[float, Field(ge=-90, le=90)], ...],
        Field(
            max_length=8,
            description="also detect on the frame turned by these angles in degrees, for rolled heads; none: off",
        ),
        Cli(metavar="DEG,...", parse=parse_angles, format=format_angles),
    ] = (30.0, -30.0)
    # Eight: each turned pass then runs on one key frame in 8, the two spread apart (a quarter of an
    # upright pass per key frame on average, at most one turned pass on any), and a face that comes in
    # rolled is found within 8 key frames (0.32 s at 25 fps with interval 1, 1.3 s with interval 4).
    roll_every: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="run each rolled pass on one key frame in N per camera (all on its first; the passes "
            "spread over the N); faces they found are followed on upright patches between",
        ),
        Cli(metavar="N"),
    ] = 8
    downscale: Annotated[
        float, Field(gt=0, le=1, description="detect on the frame resized by this factor (0.5: half)")
    ] = 1.0
    min_face: Annotated[
        int, Field(ge=8, description="smallest face to report, in full-resolution pixels"), Cli(metavar="PX")
    ] = 40
    # 0.6 with the landmark check below, not 0.7 without it: more of the faces that are there and fewer
    # backs of heads (docs/model.md, "Faces the detector should not report").
    score_threshold: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            description="YuNet's minimum confidence (Haar: unused); faces under confident_score must also "
            "pass the landmark check",
        ),
    ] = 0.6
    confident_score: Annotated[
        float,
        Field(
            gt=0,
            le=1,
            description="YuNet faces scoring at least this are reported whatever their landmarks; those "
            "between score_threshold and it only when their landmarks fit a frontal face "
            "(max_landmark_misfit); at or below score_threshold: no landmark check",
        ),
    ] = 0.85
    max_landmark_misfit: Annotated[
        float,
        Field(
            gt=0,
            description="how far, as a fraction of the crop's side (RMS), a less confident face's five "
            "landmarks may lie from FER2013's frontal layout after the best rotation, scale and shift",
        ),
    ] = 0.07
    crop_size: Annotated[
        int, Field(ge=16, le=256, description="side of the face crops sent to the classifier"), Cli(metavar="PX")
    ] = 48
    threads: Annotated[
        int,
        Field(
            ge=0,
            le=256,
            description="OpenCV threads per worker; 0: auto, the CPUs this process may use (affinity and cgroup "
            "quota), which the launcher splits between the workers and the classifier (deploy/plan.py)",
        ),
    ] = 0
    interval: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="detect faces on one frame in N per camera, reuse its boxes on the N-1 "
            "after (DeepStream's interval)",
        ),
        Cli(metavar="N"),
    ] = 1
    # One: with several cameras a worker still has a frame from another camera ready behind the one it
    # works on, and every frame it holds is a frame of latency; a single fast file gains from 2.
    window: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="frames in flight per camera towards each worker (credit window, see capture/dispatch.py)",
        ),
        Cli(metavar="N"),
    ] = 1
