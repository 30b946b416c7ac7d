"""The classifier's settings: the only copy of their defaults, limits and meanings.

``python -m classifier`` takes its options from :class:`ClassifierSettings` (``emostream.settings_cli``),
:class:`classifier.service.ClassifierService` takes the object, and the launcher config's ``classifier``
section is :class:`ClassifierSettings` (``deploy.config.ClassifierConfig``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emostream.endpoint import normalize_endpoint
from emostream.modelfile import MAX_BATCH
from emostream.modelinfo import TtaMode
from emostream.onnxmodel import EngineName
from emostream.settings_cli import Cli

#: The models trained by ``python -m training`` and shipped with the repository: the default, and the
#: accurate operating point (an ensemble, served with ``classifier.model``) when one is shipped.
SHIPPED_MODEL = Path(__file__).resolve().parent / "models" / "emotion.pt2"
SHIPPED_ACCURATE_MODEL = SHIPPED_MODEL.with_name("emotion_accurate.pt2")

#: What runs the model (classifier/runtimes.py): torch, an ONNX engine, or the fastest of them. Here, not
#: there, so that reading settings imports no torch.
RuntimeName = Literal["auto", "torch", EngineName]
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)


def parse_switch(text: str) -> bool | None:
    """``auto`` -> None, ``on``/``true`` -> True, ``off``/``false`` -> False."""
    value = {"auto": None, "on": True, "true": True, "off": False, "false": False}
    key = text.strip().lower()
    if key not in value:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of auto, on, off")
    return value[key]


def format_switch(value: bool | None) -> str:
    return "auto" if value is None else "on" if value else "off"


class ClassifierSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    model: Annotated[str | None, Field(description="model file (none: the shipped model)")] = None
    control: Annotated[
        str | None,
        Field(
            description="ZeroMQ endpoint (REP) the classifier binds for live model swaps (python -m deploy model, "
            "classifier/swap.py); none: no control endpoint, except under the launcher, which binds "
            "network.base_port+49 (deploy/plan.py); HOST:PORT means tcp://HOST:PORT",
        ),
        Cli(metavar="ENDPOINT"),
    ] = None
    max_batch: Annotated[int, Field(ge=1, le=MAX_BATCH, description="faces per forward pass, at most")] = 64
    max_wait_ms: Annotated[float, Field(ge=0, le=10_000, description="longest a face waits for a batch")] = 10.0
    adaptive_wait: Annotated[
        bool,
        Field(
            description="close a partial batch early when the measured arrival rate says no other face will come "
            "before max_wait_ms (see classifier/batching.py)"
        ),
        Cli(flag="--fixed-wait"),
    ] = True
    max_age_ms: Annotated[
        float,
        Field(
            ge=0,
            le=600_000,
            description="drop faces of live cameras captured longer ago than this (counted, reason 'stale'); "
            "0: never. Frames of files are never dropped",
        ),
    ] = 1000.0
    device: Annotated[Literal["auto", "cpu", "cuda"], Field(description="where the model runs")] = "auto"
    runtime: Annotated[
        RuntimeName,
        Field(
            description="what runs the model: torch (the .pt2), onnxruntime or openvino (an .onnx model file, or "
            "the <stem>.int8.onnx beside the .pt2), or auto: torch on CUDA, on the CPU the fastest candidate "
            "timed at start-up (logged)"
        ),
    ] = "auto"
    bf16: Annotated[
        bool | None,
        Field(
            description="bfloat16 autocast: on, off (float32), or auto (unset): on CUDA and on CPUs with AMX or "
            "AVX-512 bf16, where it is faster; elsewhere CPU bf16 is emulated and slower than float32"
        ),
        Cli(metavar="{auto,on,off}", parse=parse_switch, format=format_switch),
    ] = None
    rescore_near_ties: Annotated[
        bool,
        Field(
            description="serving the int8 file made from a .pt2: re-score in float32 the faces whose top two int8 "
            "logits lie closer than the gap its export recorded, so that the served top class is float32's whichever "
            "engine serves; off: int8's own ranking, for less CPU per face (docs/model.md, near ties)"
        ),
        Cli(flag="--keep-near-ties"),
    ] = True
    tta: Annotated[
        TtaMode,
        Field(
            description="test-time augmentation: flip = mean of each face's and its mirror image's logits (twice "
            "the compute), multicrop = mean over ten shifted and mirrored views"
        ),
    ] = "none"
    # One: the classifier shares the cores with detectors and capture, and an OpenMP pool whose threads
    # get preempted stalls every batch.
    threads: Annotated[
        int,
        Field(
            ge=0,
            le=256,
            description="the serving engine's CPU threads (torch, onnxruntime or OpenVINO); 0: auto, the CPUs this "
            "process may use (affinity and cgroup quota), under the launcher an equal share with each detector worker "
            "(deploy/plan.py)",
        ),
    ] = 1
    # Eight frames: a third of a second at 25 fps, shorter than a real expression, long enough to
    # smooth away most single-frame label flips.
    smoothing_window: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="frames each face track's emotion scores are smoothed over (an exponential moving "
            "average with the weight of an N-frame mean, see classifier/tracking.py); 1: no smoothing",
        ),
        Cli(metavar="N"),
    ] = 8
    track_iou: Annotated[
        float,
        Field(gt=0, le=1, description="least IoU between a face and a track's last box for the face to continue it"),
    ] = 0.3
    track_max_age: Annotated[
        int,
        Field(
            ge=0,
            le=10_000,
            description="frames of its camera a track survives without a matching face (a head turned away) "
            "before it is dropped",
        ),
        Cli(metavar="FRAMES"),
    ] = 25
    # Two frames: at 25 fps a face's expression barely changes in 40 ms, and the smoothing above mixes
    # eight frames anyway; it halves the model calls of steady faces on any machine.
    classify_every: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="classify a tracked face at least every N frames of its camera; in between it reuses "
            "its track's last scores (classifier/tracking.py); 1: every face of every frame",
        ),
        Cli(metavar="N"),
    ] = 2
    # Under load, reusing a steady face's scores for a few more frames costs less than the alternatives:
    # queues (latency on every event) or stale drops (events lost). The smoothing spans eight frames anyway.
    # Up to 8, not 4: an ensemble model keeps four live cameras on two cores only at 8, and the interval
    # grows only while batches are late, so a lighter model goes that far only on a machine that short
    # of CPU (docs/benchmarks.md).
    classify_every_max: Annotated[
        int,
        Field(
            ge=1,
            le=100,
            description="under load, classify a tracked face only every up to N frames: while batches of live "
            "cameras' faces arrive later than load_latency_ms after capture, the interval grows from "
            "classify_every one frame at a time, and steps back once they are on time (classifier/tracking.py); "
            "classify_every or less: never",
        ),
        Cli(metavar="N"),
    ] = 8
    load_latency_ms: Annotated[
        float,
        Field(
            gt=0,
            le=60_000,
            description="capture-to-classifier age of a batch's oldest live face above which the classifier is "
            "behind and reuses scores longer (classify_every_max)",
        ),
        Cli(metavar="MS"),
    ] = 100.0

    @field_validator("control")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return None if value is None else normalize_endpoint(value)
