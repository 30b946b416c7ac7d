"""Turn a validated config into the stage processes to run: names, command lines, endpoints, ports."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from enum import Enum

from deploy.config import ConfigError, PipelineConfig


class Restart(str, Enum):
    """When the supervisor restarts a stage that exited."""

    ALWAYS = "always"  # services: any exit is a failure
    ON_FAILURE = "on_failure"  # finite sources: exit 0 means "the file ended", not a crash


@dataclass
class StageSpec:
    name: str
    module: str
    args: list[str]
    restart: Restart = Restart.ALWAYS
    metrics_port: int | None = None
    #: A stage whose fatal exit stops the whole pipeline (all but per-camera captures).
    essential: bool = True
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


@dataclass(frozen=True)
class Endpoints:
    faces: str
    events_in: str
    frames: dict[str, str]
    events: str
    #: Each camera's preview PUB endpoint (base_port+2+i); empty without a recorder or a viewer.
    previews: dict[str, str] = field(default_factory=dict)
    #: Each webrtc camera's bridge (the ingest PUSHes there, its capture PULLs): after the frames'
    #: ports, base_port+50+len(cameras)+j for the j-th webrtc camera.
    bridges: dict[str, str] = field(default_factory=dict)


#: Preview ports sit between the sink's input (base+1) and the frames (base+50+i).
PREVIEW_OFFSET = 2
MAX_PREVIEW_CAMERAS = 50 - PREVIEW_OFFSET


def endpoints(config: PipelineConfig) -> Endpoints:
    net = config.network
    ends = Endpoints(
        faces=f"tcp://{net.host}:{net.base_port}",
        events_in=f"tcp://{net.host}:{net.base_port + 1}",
        frames={c.id: f"tcp://{net.host}:{net.base_port + 50 + i}" for i, c in enumerate(config.cameras)},
        events=config.sink.publish,
    )
    if config.recorder is not None or config.viewer is not None:
        if len(config.cameras) > MAX_PREVIEW_CAMERAS:
            section = "recorder" if config.recorder is not None else "viewer"
            raise ConfigError(
                f"{section}: handles at most {MAX_PREVIEW_CAMERAS} cameras (their previews take ports "
                f"network.base_port+{PREVIEW_OFFSET}..+49), the config has {len(config.cameras)}"
            )
        ends.previews.update(
            {c.id: f"tcp://{net.host}:{net.base_port + PREVIEW_OFFSET + i}" for i, c in enumerate(config.cameras)}
        )
    webrtc = [c for c in config.cameras if c.is_webrtc]
    first_bridge = net.base_port + 50 + len(config.cameras)
    ends.bridges.update({c.id: f"tcp://{net.host}:{first_bridge + j}" for j, c in enumerate(webrtc)})
    internal = [ends.faces, ends.events_in, *ends.frames.values(), *ends.previews.values(), *ends.bridges.values()]
    if ends.events in internal:
        raise ConfigError(
            f"sink.publish: {ends.events} is also an internal endpoint "
            f"(network.base_port {net.base_port} takes ports from {net.base_port} on)"
        )
    return ends


def metrics_ports(config: PipelineConfig) -> dict[str, int]:
    """Prometheus port of every process, keyed by stage name ("launcher" for the supervisor itself)."""
    base = config.metrics.base_port
    ports = {"launcher": base, "sink": base + 1, "classifier": base + 2}
    if config.recorder is not None:
        ports["recorder"] = base + 3
    if config.viewer is not None:
        ports["viewer"] = base + 4
    if any(c.is_webrtc for c in config.cameras):
        ports["webrtc_ingest"] = base + 5
    ports.update({f"detector-{i}": base + 10 + i for i in range(config.detector.workers)})
    ports.update({f"capture-{c.id}": base + 100 + i for i, c in enumerate(config.cameras)})
    return ports


def plan_stages(config: PipelineConfig) -> list[StageSpec]:
    """Stages in start order: downstream first, so every socket a stage connects to is already bound."""
    ends = endpoints(config)
    ports = metrics_ports(config) if config.metrics.enabled else {}

    def common(name: str) -> list[str]:
        port = ports.get(name)
        args = ["--metrics-port", str(port), "--metrics-host", config.metrics.host] if port else []
        if config.security.curve_keys:
            args += ["--curve-keys", config.security.curve_keys]  # every stage secures every socket
        return args

    stages: list[StageSpec] = []
    rec = config.recorder
    if rec is not None:
        # First in the plan, so last to stop (supervisor.stop goes sources first, in reverse plan order):
        # the sink's final events are drawn before the files close. Its SUB sockets connect, and ZeroMQ
        # connects before the other side binds. Essential: only cameras are non-essential sources, and a
        # recorder that cannot write its folder (a fatal exit) is a config error the run should not hide.
        rec_args = [arg for endpoint in ends.previews.values() for arg in ("--preview", endpoint)]
        rec_args += [
            "--events",
            ends.events,
            "--out",
            rec.out,
            "--format",
            rec.format,
            "--max-wait",
            str(rec.max_wait_s),
        ]
        if rec.blur_faces:
            rec_args.append("--blur-faces")
        if rec.fps:
            rec_args += ["--fps", str(rec.fps)]
        stages.append(
            StageSpec("recorder", "sink.record", rec_args + common("recorder"), metrics_port=ports.get("recorder"))
        )

    view = config.viewer
    if view is not None:
        # Like the recorder: SUB sockets only, so it may start first and stops last; essential, because a
        # viewer that cannot bind its port (a fatal exit) is a config error the run should not hide.
        view_args = [arg for endpoint in ends.previews.values() for arg in ("--preview", endpoint)]
        view_args += ["--events", ends.events, "--host", view.host, "--port", str(view.port)]
        view_args += ["--max-wait", str(view.max_wait_s)]
        if view.token:
            view_args += ["--token", view.token]
        if view.blur_faces:
            view_args.append("--blur-faces")
        stages.append(
            StageSpec("viewer", "sink.viewer", view_args + common("viewer"), metrics_port=ports.get("viewer"))
        )

    if ends.bridges:
        # Binds every bridge (the captures connect) and the page; essential: a page that cannot bind its
        # port is a config error. Its browsers come and go; each capture reports its own camera up or down.
        ing = config.webrtc_ingest
        ing_args = ["--host", ing.host, "--port", str(ing.port)]
        for camera, bridge in ends.bridges.items():
            ing_args += ["--camera", f"{camera}={bridge}"]
        if ing.token:
            ing_args += ["--token", ing.token]
        stages.append(
            StageSpec(
                "webrtc_ingest",
                "capture.webrtc_ingest",
                ing_args + common("webrtc_ingest"),
                metrics_port=ports.get("webrtc_ingest"),
            )
        )

    sink_args = ["--pull", ends.events_in, "--publish", ends.events]
    if config.sink.jsonl:
        sink_args += ["--jsonl", config.sink.jsonl]
    stages.append(StageSpec("sink", "sink", sink_args + common("sink"), metrics_port=ports.get("sink")))

    cls = config.classifier
    cls_args = [
        "--pull",
        ends.faces,
        "--push",
        ends.events_in,
        "--max-batch",
        str(cls.max_batch),
        "--max-wait-ms",
        str(cls.max_wait_ms),
        "--max-age-ms",
        str(cls.max_age_ms),
        "--device",
        cls.device,
        "--tta",
        cls.tta,
        "--threads",
        str(cls.threads),
        "--smoothing-window",
        str(cls.smoothing_window),
        "--track-iou",
        str(cls.track_iou),
        "--track-max-age",
        str(cls.track_max_age),
    ]
    if cls.model:
        cls_args += ["--model", cls.model]
    if not cls.adaptive_wait:
        cls_args.append("--fixed-wait")
    if not cls.bf16:
        cls_args.append("--no-bf16")
    stages.append(
        StageSpec("classifier", "classifier", cls_args + common("classifier"), metrics_port=ports.get("classifier"))
    )

    det = config.detector
    for i in range(det.workers):
        name = f"detector-{i}"
        args = ["--worker", str(i)]
        for frames in ends.frames.values():
            args += ["--frames", frames]
        args += [
            "--push",
            ends.faces,
            "--backend",
            det.backend,
            "--downscale",
            str(det.downscale),
            "--min-face",
            str(det.min_face),
            "--score-threshold",
            str(det.score_threshold),
            "--crop-size",
            str(det.crop_size),
            "--threads",
            str(det.threads),
            "--interval",
            str(det.interval),
            "--window",
            str(det.window),
        ]
        if det.model:
            args += ["--model", det.model]
        stages.append(StageSpec(name, "detector", args + common(name), metrics_port=ports.get(name)))

    for camera in config.cameras:
        name = f"capture-{camera.id}"
        args = [
            "--camera",
            camera.id,
            "--source",
            f"webrtc:{ends.bridges[camera.id]}" if camera.id in ends.bridges else str(camera.source),
            "--frames",
            ends.frames[camera.id],
            "--events",
            ends.events_in,
            "--pacing",
            camera.pacing,
            "--encoding",
            camera.encoding,
            "--jpeg-quality",
            str(camera.jpeg_quality),
            "--decode-threads",
            str(camera.decode_threads),
        ]
        if camera.loop:
            args.append("--loop")
        if camera.fps:
            args += ["--fps", str(camera.fps)]
        if camera.resize:
            args += ["--resize", f"{camera.resize[0]}x{camera.resize[1]}"]
        if camera.drop_policy:
            args += ["--drop-policy", camera.drop_policy]
        if camera.id in ends.previews:
            args += ["--preview", ends.previews[camera.id]]
        if not config.network.shared_memory:
            args.append("--no-shared-memory")
        finite = camera.is_file and not camera.loop
        stages.append(
            StageSpec(
                name,
                "capture",
                args + common(name),
                restart=Restart.ON_FAILURE if finite else Restart.ALWAYS,
                metrics_port=ports.get(name),
                essential=False,
                labels={"camera": camera.id},
            )
        )
    return stages
