"""What a bench run measures with (:class:`BenchSettings`), what one end-to-end run starts
(:class:`PipelineSpec`), and the launcher config of such a run, validated as a
:class:`deploy.config.PipelineConfig` and laid out on ports by :mod:`deploy.plan`.

The bench's own choices live here once; stage defaults it does not change come from the stages'
config models.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from capture.sources import file_seconds
from deploy.config import ClassifierConfig, PipelineConfig, parse_config
from deploy.plan import endpoints, metrics_ports
from detector.backends import YUNET_MODEL

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
DEFAULT_VIDEO = SHARED / "media" / "faces.mp4"
DEFAULT_YUNET = Path(YUNET_MODEL)

_CLASSIFIER = ClassifierConfig()


@dataclass(frozen=True)
class PipelineSpec:
    """What one end-to-end run starts: ``cameras`` replays of the video and the stages' settings.

    The stage settings below are the ones the bench chooses; :class:`BenchSettings` takes its
    defaults from here and :meth:`BenchSettings.spec` copies them back by name.
    """

    cameras: int
    pacing: str = "realtime"
    drop_policy: str = "drop_oldest"
    workers: int = 2
    downscale: float = 0.5
    #: Full-resolution pixels, as in deploy/examples/three_cameras.yaml: the meeting video's far faces are small.
    min_face: int = 20
    #: detector.interval: detect on 1 frame in 4, hold the boxes on the others (see interval_study; the
    #: faces kept and the labels shown on faces.mp4 are those of interval 3: docs/benchmarks.md).
    interval: int = 4
    #: OpenCV threads per detector worker; 0: the launcher's split of the usable CPUs (deploy/plan.py).
    detector_threads: int = 0
    max_batch: int = _CLASSIFIER.max_batch
    max_wait_ms: float = _CLASSIFIER.max_wait_ms
    #: network.shared_memory: frames to the detectors through /dev/shm (True) or over their sockets.
    shared_memory: bool = True
    #: Camera i of n starts i/n of the way into the video (cameras[].start_s), so the cameras' scene
    #: cuts, among them the video's loop, come at different moments as those of independent cameras do;
    #: False: every camera plays the same frame at once, all faces of all cameras new at each loop.
    stagger: bool = True
    #: classifier.model: the emotion model file the classifier serves (None: the shipped default).
    emotion_model: str | None = None
    #: classifier.classify_every_max (None: the classifier's default).
    classify_every_max: int | None = None

    @property
    def label(self) -> str:
        suffix = ("" if self.shared_memory else "-socket") + ("" if self.stagger or self.cameras == 1 else "-in-step")
        if self.emotion_model:
            suffix += f"-{Path(self.emotion_model).stem}"
        return f"{self.cameras}cam-{self.pacing}-{self.drop_policy}{suffix}"


_SPEC = PipelineSpec(cameras=1)
#: The stage settings a bench run passes on to every end-to-end run.
STAGE_FIELDS = ("workers", "downscale", "min_face", "interval", "detector_threads", "max_batch", "max_wait_ms")


@dataclass(frozen=True)
class BenchSettings:
    """Everything a bench run measures with; :meth:`quick_settings` shrinks it to ~2-3 minutes."""

    video: Path = DEFAULT_VIDEO
    yunet: Path = DEFAULT_YUNET
    quick: bool = False
    cameras: tuple[int, ...] = (1, 2, 4)
    workers: int = _SPEC.workers
    fast_cameras: int = 2
    downscale: float = _SPEC.downscale
    min_face: int = _SPEC.min_face
    interval: int = _SPEC.interval
    detector_threads: int = _SPEC.detector_threads
    #: Detection intervals whose tracking quality is measured offline on the video's frames.
    intervals: tuple[int, ...] = (1, 2, 3, 4, 5)
    max_batch: int = _SPEC.max_batch
    max_wait_ms: float = _SPEC.max_wait_ms
    baseline_frames: int | None = None  # per slice; None: the whole video
    #: The baseline runs twice (first and last step), each slice also capped at this many seconds.
    baseline_slice_s: float = 20.0
    stage_frames: int = 241
    chunk: int = 25
    batch1_faces: int = 400
    batched_batches: int = 40
    sweep: tuple[int, ...] = (8, 16, 32)
    classifier_rounds: int = 8
    classifier_max_s: float = 25.0
    matmul_size: int = 4096
    matmul_reps: int = 8
    #: Threads of the matmul peaks; 0: the usable CPUs (emostream.cpu.cpu_budget).
    matmul_threads: int = 0
    #: Side of the int8 peak's matrices (standalone.measure_int8_peak): integer GEMMs run fastest on
    #: blocks that stay in cache; larger ones measure memory more than the integer units.
    int8_matmul_size: int = 1024
    #: How long the CPU's steadiness is sampled (standalone.measure_cpu_steadiness); 0: not measured.
    steadiness_s: float = 20.0
    #: How long decode and the detector run, alone and then one copy per usable CPU at once
    #: (deploy/bench/allcore.py); 0: not measured.
    all_core_s: float = 6.0
    warmup_s: float = 5.0
    measure_s: float = 40.0
    startup_timeout_s: float = 120.0
    realtime_drop_policy: str = "drop_oldest"
    #: One more max-throughput run with these extra environment variables (none: skipped).
    what_if_env: dict[str, str] | None = None
    #: The accurate operating point (an ensemble model file): its faces/s side by side with the default
    #: model's, and the largest realtime run again serving it (None: skipped).
    accurate_model: Path | None = None

    def spec(self, cameras: int, pacing: str, drop_policy: str, **changes: Any) -> PipelineSpec:
        """The pipeline of one end-to-end run under these settings (``changes``: other PipelineSpec fields)."""
        stage = {name: getattr(self, name) for name in STAGE_FIELDS}
        return PipelineSpec(cameras=cameras, pacing=pacing, drop_policy=drop_policy, **{**stage, **changes})

    def accurate_spec(self, cameras: int) -> PipelineSpec:
        """``cameras`` live cameras with the classifier serving ``accurate_model``, its other settings the defaults."""
        if self.accurate_model is None:
            raise ValueError("no accurate model to run")
        return self.spec(
            cameras,
            "realtime",
            self.realtime_drop_policy,
            emotion_model=str(self.accurate_model),
        )

    @classmethod
    def quick_settings(cls, **overrides: Any) -> BenchSettings:
        base = cls(
            quick=True,
            baseline_frames=100,
            stage_frames=100,
            batch1_faces=150,
            batched_batches=16,
            sweep=(8, 32),
            classifier_rounds=4,
            classifier_max_s=10.0,
            baseline_slice_s=8.0,
            matmul_reps=4,
            steadiness_s=5.0,
            all_core_s=2.0,
            measure_s=10.0,
        )
        return replace(base, **overrides)


def config_dict(video: str | Path, yunet: str | Path, spec: PipelineSpec, base_port: int) -> dict[str, Any]:
    """The launcher config (as written to YAML) of one run, its ports from ``base_port`` on."""
    length = file_seconds(video) if spec.stagger else None
    return {
        "cameras": [
            {
                "id": f"cam{i}",
                "source": str(video),
                "loop": True,
                "pacing": spec.pacing,
                "drop_policy": spec.drop_policy,
                **({"start_s": round(i * length / spec.cameras, 3)} if length and i else {}),
            }
            for i in range(spec.cameras)
        ],
        "detector": {
            "workers": spec.workers,
            "backend": "yunet",
            "model": str(yunet),
            "downscale": spec.downscale,
            "min_face": spec.min_face,
            "interval": spec.interval,
            "threads": spec.detector_threads,
        },
        "classifier": {
            "max_batch": spec.max_batch,
            "max_wait_ms": spec.max_wait_ms,
            "device": "cpu",
            **({"model": spec.emotion_model} if spec.emotion_model else {}),
            **({"classify_every_max": spec.classify_every_max} if spec.classify_every_max else {}),
        },
        # base+2..base+48 hold previews only, which a pipeline without recorder or viewer does not have.
        "sink": {"publish": f"tcp://127.0.0.1:{base_port + 2}"},
        "network": {"base_port": base_port, "shared_memory": spec.shared_memory},
        "metrics": {"base_port": base_port + 200},
        # The camera set is fixed for a measured run; and the default port may be a running launcher's.
        "control": {"enabled": False},
    }


def used_ports(config: PipelineConfig) -> list[int]:
    """Every TCP port the pipeline of ``config`` binds, as deploy/plan.py lays them out."""
    ends = endpoints(config)
    addresses = [ends.faces, ends.events_in, ends.events, ends.control, *ends.frames.values()]
    addresses += [*ends.previews.values(), *ends.bridges.values()]
    return [int(urlsplit(a).port or 0) for a in addresses] + list(metrics_ports(config).values())


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pipeline_config(
    video: str | Path, yunet: str | Path, spec: PipelineSpec, attempts: int = 200
) -> tuple[dict[str, Any], PipelineConfig]:
    """The launcher config of one end-to-end run with every endpoint and /metrics port free right now:
    as the dict written to YAML and as the launcher validates it.

    Ports are chosen below Linux's ephemeral range (32768+) so that outgoing connections of other
    processes on this machine do not take them meanwhile.
    """
    rng = random.Random()
    for _ in range(attempts):
        data = config_dict(video, yunet, spec, rng.randrange(10_000, 32_000 - 400))
        parsed = parse_config(data)
        if all(port_free(p) for p in used_ports(parsed)):
            return data, parsed
    raise RuntimeError("no free port range found for the pipeline")
