"""Turn a validated config into the stage processes to run: names, command lines, environments,
endpoints, ports, and how the machine's CPUs are split between the stages' thread pools.

Each stage's command line is its settings model written out (``emostream.settings_cli.to_argv``), so
a setting added to a stage's model reaches the stage without a line here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from capture.settings import CameraSettings
from classifier.settings import ClassifierSettings
from deploy.config import CameraConfig, ConfigError, PipelineConfig, RecorderConfig, ViewerConfig
from detector.settings import DetectorSettings
from emostream import settings_cli
from emostream.cpu import CpuBudget, affinity_cpus, cpu_budget
from sink.settings import SinkSettings


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
    #: Set in the stage's environment on top of the launcher's own (thread counts, see THREAD_ENV).
    env: dict[str, str] = field(default_factory=dict)
    #: A stage that follows camera changes (``--follow-stdin``): the line that tells it the current cameras'
    #: inputs (:func:`camera_update`), written to its stdin when the camera set changes.
    update: str | None = None
    #: Unix nice value the stage runs at (supervisor.nice), on top of the launcher's.
    nice: int = 0
    #: The CPUs the stage is pinned to (supervisor.pin_cpus); None: the launcher's own.
    cpus: tuple[int, ...] | None = None

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args]


def camera_update(inputs: dict[str, str]) -> str:
    """The line a ``--follow-stdin`` stage reads (emostream/follow.py): camera id -> the endpoint it reads."""
    return json.dumps({"cameras": inputs}, sort_keys=True) + "\n"


#: Thread-count variables of the libraries a stage may load (OpenMP inside torch, MKL, OpenBLAS under
#: numpy): the launcher sets them in every stage to that stage's pool size, so a library that only reads
#: the environment agrees with the stage's --threads (1 for stages without a pool of their own).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: OpenCV's own pool size variable, set in the detectors beside ``--threads`` (which sets it too).
OPENCV_THREAD_ENV = "OPENCV_FOR_THREADS_NUM"


@dataclass(frozen=True)
class ThreadSplit:
    """How the launcher sizes the thread pools of the stages it starts from the CPU budget, and which CPUs
    it pins the per-frame stages to (:func:`pin_plan`).

    Processes are the unit of parallelism here: frames are independent, so detector workers scale
    without sharing anything, while a pool splits one frame or batch and stalls whenever one of its
    threads is preempted by another stage. So every detector worker and the classifier count as one
    busy process each, and pools get more than one thread only from CPUs no process is expected to keep
    busy: ``workers x detector + classifier <= cpus`` whenever the budget has a CPU per process.
    Captures, the sink and the launcher are left out: a capture decodes on its own thread
    (``cameras[].decode_threads``) and they take a small share at the frame rates a camera offers.
    """

    budget: CpuBudget
    workers: int
    #: OpenCV threads of each detector worker, torch threads of the classifier.
    detector: int
    classifier: int
    #: Whether each came from the budget (the setting was 0) rather than the config.
    detector_auto: bool = True
    classifier_auto: bool = False
    #: The CPUs the detector workers and captures are pinned to, round-robin; empty: none pinned.
    pinned: tuple[int, ...] = ()
    #: Why they are pinned or not, for the log.
    pinning: str = ""

    def pinned_cpus(self, first: int, count: int = 1) -> tuple[int, ...] | None:
        """``count`` of the pinned CPUs from position ``first`` on, wrapping around; None when none are pinned."""
        if not self.pinned:
            return None
        n = len(self.pinned)
        return tuple(sorted({self.pinned[(first + k) % n] for k in range(max(1, min(count, n)))}))

    def detector_cpus(self, worker: int) -> tuple[int, ...] | None:
        """Worker ``worker``'s CPUs: one per pool thread, the workers first in the round."""
        return self.pinned_cpus(worker * self.detector, self.detector)

    def capture_cpus(self, slot: int, decode_threads: int) -> tuple[int, ...] | None:
        """The CPUs of the camera in ``slot`` (its port slot, stable while cameras come and go): after the
        workers' in the round, as many as its decoder threads (FFmpeg's choice, 0, gets one)."""
        return self.pinned_cpus(self.workers * self.detector + slot, decode_threads)

    @property
    def oversubscribed(self) -> bool:
        """More pool threads than usable CPUs, beyond the one thread every process needs anyway."""
        return self.workers * self.detector + self.classifier > max(self.budget.cpus, self.workers + 1)

    def describe(self) -> str:
        def auto(flag: bool) -> str:
            return " (auto)" if flag else ""

        text = (
            f"cpu budget: {self.budget.describe()}; threads: detector {self.workers} x {self.detector}"
            f"{auto(self.detector_auto)}, classifier {self.classifier}{auto(self.classifier_auto)}"
        )
        return f"{text}; {self.pinning}" if self.pinning else text

    def warning(self) -> str | None:
        """One line for the log when explicit thread counts ask for more CPUs than the budget has."""
        if not self.oversubscribed:
            return None
        asked = self.workers * self.detector + self.classifier
        return (
            f"detector.workers x detector.threads + classifier.threads = {self.workers} x {self.detector} + "
            f"{self.classifier} = {asked} threads on {self.budget.cpus} usable CPUs: the pools will contend "
            "(0 lets the launcher split the budget)"
        )


def split_threads(workers: int, detector: int, classifier: int, budget: CpuBudget) -> ThreadSplit:
    """Thread counts for ``detector.threads`` and ``classifier.threads`` (0: auto) on ``budget``.

    Both auto: the classifier an equal share with each worker, ``cpus // (workers + 1)``; a detector
    worker what the classifier leaves, split between the workers; an explicit count is kept and the
    other side gets the rest. Never less than one thread.
    """
    cpus = budget.cpus
    if classifier > 0:
        cls = classifier
    elif detector > 0:
        cls = max(1, cpus - workers * detector)
    else:
        cls = max(1, cpus // (workers + 1))
    det = detector if detector > 0 else max(1, (cpus - cls) // workers)
    return ThreadSplit(budget, workers, det, cls, detector_auto=detector == 0, classifier_auto=classifier == 0)


def pin_plan(
    setting: bool | Literal["auto"], processes: int, budget: CpuBudget, cpus: Sequence[int]
) -> tuple[tuple[int, ...], str]:
    """The CPUs to pin ``processes`` captures and detector workers to (empty: none) and why, for
    ``supervisor.pin_cpus``; ``cpus``: the CPU ids the launcher may run on."""
    ids = tuple(sorted(set(cpus)))
    if setting is False:
        return (), "not pinned (supervisor.pin_cpus: false)"
    if len(ids) < 2:
        return (), "not pinned (one CPU)"
    if setting == "auto" and budget.source != "affinity":
        return (), f"not pinned: a {budget.source} quota, not the affinity mask, sets the budget (pin_cpus: true pins)"
    if setting == "auto" and processes < len(ids):
        return (), f"not pinned: {processes} captures and detector workers for {len(ids)} CPUs"
    return ids, f"captures and detector workers pinned round-robin to CPUs {','.join(map(str, ids))}"


def thread_split(
    config: PipelineConfig, budget: CpuBudget | None = None, cpus: Sequence[int] | None = None
) -> ThreadSplit:
    """The config's thread split and CPU pinning on ``budget`` (None: the CPUs this launcher may use).

    ``cpus``: the CPU ids to pin to; None: this process's affinity mask, or with ``budget`` given, that
    budget's mask as CPUs 0..n-1 (a machine described, not this one).
    """
    ids = cpus if cpus is not None else (sorted(affinity_cpus()) if budget is None else range(budget.affinity))
    budget = budget or cpu_budget()
    split = split_threads(config.detector.workers, config.detector.threads, config.classifier.threads, budget)
    processes = len(config.cameras) + config.detector.workers
    pinned, why = pin_plan(config.supervisor.pin_cpus, processes, budget, list(ids))
    return dataclasses.replace(split, pinned=pinned, pinning=why)


def thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_ENV}


#: Preview ports sit between the sink's input (base+1) and the classifier's control endpoint (base+49),
#: the frames from base+50+i on.
PREVIEW_OFFSET = 2
FRAMES_OFFSET = 50
CONTROL_OFFSET = FRAMES_OFFSET - 1
MAX_PREVIEW_CAMERAS = CONTROL_OFFSET - PREVIEW_OFFSET


@dataclass(frozen=True)
class PortLayout:
    """Every port number of a pipeline: the one place the layout is written (endpoints, metrics, the bench).

    From ``network.base_port`` (B): the classifier's faces input B, the sink's input B+1, camera i's preview
    B+2+i (with a recorder or a viewer, so at most 47 cameras then), the classifier's control endpoint B+49
    (live model swaps), camera i's frames B+50+i, the j-th webrtc camera's bridge B+50+len(cameras)+j.
    From ``metrics.base_port`` (M): launcher M, sink M+1, classifier M+2, recorder M+3, viewer M+4,
    webrtc_ingest M+5, detector i M+10+i, camera i M+100+i. Ports B+2..B+48 stay free without previews
    (the bench publishes its events there).

    "Camera i" is the camera's slot: its place in the config at start. A camera added while the pipeline
    runs (deploy/control.py) takes the lowest free slot, and the others keep theirs, so no running capture
    has to move to another port.
    """

    host: str
    faces: int
    events_in: int
    control: int
    #: Camera id -> port; previews only with a recorder or a viewer, bridges only for webrtc cameras.
    frames: dict[str, int]
    previews: dict[str, int]
    bridges: dict[str, int]
    #: Process name ("launcher", "sink", "detector-0", "capture-<id>", ...) -> its /metrics port.
    metrics: dict[str, int]
    #: Camera id -> its slot (i above).
    slots: dict[str, int] = field(default_factory=dict)

    def internal_ports(self) -> list[int]:
        """The ZeroMQ ports the stages bind on ``network.host``."""
        ports = [self.faces, self.events_in, self.control, *self.frames.values(), *self.previews.values()]
        return [*ports, *self.bridges.values()]

    def ports(self) -> list[int]:
        """Every port the pipeline binds but the sink's public endpoint and the browser pages."""
        return [*self.internal_ports(), *self.metrics.values()]


def _slots(cameras: list[CameraConfig], keep: PortLayout | None) -> dict[str, int]:
    """Each camera's slot: its index without ``keep``; else the one it has in ``keep``, or for a camera new
    since, the lowest slot neither taken nor under a webrtc bridge (the ingest binds those from its start)."""
    if keep is None:
        return {camera.id: i for i, camera in enumerate(cameras)}
    slots = {camera.id: keep.slots[camera.id] for camera in cameras if camera.id in keep.slots}
    base = keep.faces
    blocked = {port - base - FRAMES_OFFSET for port in keep.bridges.values()}
    for i, camera in enumerate(cameras):
        if camera.id in slots:
            continue
        if camera.is_webrtc:
            raise ConfigError(
                f"cameras[{i}].source: a webrtc camera cannot be added while the pipeline runs "
                "(the ingest page learns its cameras at start); add it to the config and restart"
            )
        slot = 0
        while slot in blocked or slot in slots.values():
            slot += 1
        slots[camera.id] = slot
    return slots


def port_layout(config: PipelineConfig, keep: PortLayout | None = None) -> PortLayout:
    """The config's ports; a recorder or viewer with more cameras than preview ports is a ConfigError.

    ``keep``: the layout of the running pipeline, whose cameras keep their ports (see :class:`PortLayout`).
    """
    net, cameras = config.network, config.cameras
    slots = _slots(cameras, keep)
    previews: dict[str, int] = {}
    if config.recorder is not None or config.viewer is not None:
        if len(cameras) > MAX_PREVIEW_CAMERAS or max(slots.values()) >= MAX_PREVIEW_CAMERAS:
            section = "recorder" if config.recorder is not None else "viewer"
            raise ConfigError(
                f"{section}: handles at most {MAX_PREVIEW_CAMERAS} cameras (their previews take ports "
                f"network.base_port+{PREVIEW_OFFSET}..+{CONTROL_OFFSET - 1}), the config has {len(cameras)}"
            )
        previews = {c.id: net.base_port + PREVIEW_OFFSET + slots[c.id] for c in cameras}
    webrtc = [c for c in cameras if c.is_webrtc]
    if keep is not None:
        bridges = {c.id: keep.bridges[c.id] for c in webrtc}
    else:
        first_bridge = net.base_port + FRAMES_OFFSET + len(cameras)
        bridges = {c.id: first_bridge + j for j, c in enumerate(webrtc)}
    base = config.metrics.base_port
    metrics = {"launcher": base, "sink": base + 1, "classifier": base + 2}
    if config.recorder is not None:
        metrics["recorder"] = base + 3
    if config.viewer is not None:
        metrics["viewer"] = base + 4
    if webrtc:
        metrics["webrtc_ingest"] = base + 5
    metrics.update({f"detector-{i}": base + 10 + i for i in range(config.detector.workers)})
    metrics.update({f"capture-{c.id}": base + 100 + slots[c.id] for c in cameras})
    return PortLayout(
        host=net.host,
        faces=net.base_port,
        events_in=net.base_port + 1,
        control=net.base_port + CONTROL_OFFSET,
        frames={c.id: net.base_port + FRAMES_OFFSET + slots[c.id] for c in cameras},
        previews=previews,
        bridges=bridges,
        metrics=metrics,
        slots=slots,
    )


@dataclass(frozen=True)
class Endpoints:
    faces: str
    events_in: str
    frames: dict[str, str]
    events: str
    #: The classifier's control endpoint (live model swaps): ``classifier.control`` or network.base_port+49.
    control: str
    #: Each camera's preview PUB endpoint; empty without a recorder or a viewer.
    previews: dict[str, str] = field(default_factory=dict)
    #: Each webrtc camera's bridge (the ingest PUSHes there, its capture PULLs).
    bridges: dict[str, str] = field(default_factory=dict)


def endpoints(config: PipelineConfig, layout: PortLayout | None = None) -> Endpoints:
    layout = layout or port_layout(config)

    def tcp(port: int) -> str:
        return f"tcp://{layout.host}:{port}"

    ends = Endpoints(
        faces=tcp(layout.faces),
        events_in=tcp(layout.events_in),
        frames={camera: tcp(port) for camera, port in layout.frames.items()},
        events=config.sink.publish,
        control=config.classifier.control or tcp(layout.control),
        previews={camera: tcp(port) for camera, port in layout.previews.items()},
        bridges={camera: tcp(port) for camera, port in layout.bridges.items()},
    )
    if ends.events in map(tcp, layout.internal_ports()):
        base = config.network.base_port
        raise ConfigError(
            f"sink.publish: {ends.events} is also an internal endpoint "
            f"(network.base_port {base} takes ports from {base} on)"
        )
    others = {tcp(port) for port in layout.internal_ports() if port != layout.control} | {ends.events}
    if config.classifier.control and ends.control in others:
        raise ConfigError(f"classifier.control: {ends.control} is also another endpoint of the pipeline")
    return ends


def metrics_ports(config: PipelineConfig) -> dict[str, int]:
    """Prometheus port of every process, keyed by stage name ("launcher" for the supervisor itself)."""
    return port_layout(config).metrics


class _Stages:
    """Builds each stage's spec: its own arguments, then the flags every stage takes (metrics, keys)."""

    def __init__(self, config: PipelineConfig, threads: ThreadSplit, layout: PortLayout | None = None) -> None:
        self.config = config
        self.threads = threads
        layout = layout or port_layout(config)
        self.slots = layout.slots
        self.ends = endpoints(config, layout)
        self.ports = layout.metrics if config.metrics.enabled else {}
        #: Stages that follow camera changes read them from stdin (the control API is on).
        self.follow = config.control.enabled
        self.nice = config.supervisor.nice

    def following(self, args: list[str], inputs: dict[str, str]) -> tuple[list[str], str | None]:
        """``args`` and the update line of a stage that follows the camera set (camera id -> its input)."""
        if not self.follow:
            return args, None
        return [*args, "--follow-stdin"], camera_update(inputs)

    def spec(self, name: str, module: str, args: list[str], **kwargs: Any) -> StageSpec:
        port = self.ports.get(name)
        if port:
            args = [*args, "--metrics-port", str(port), "--metrics-host", self.config.metrics.host]
        if self.config.security.curve_keys:
            args = [*args, "--curve-keys", self.config.security.curve_keys]  # every stage secures every socket
        kwargs.setdefault("env", thread_env(1))
        return StageSpec(name, module, args, metrics_port=port, **kwargs)

    def recorder(self, rec: RecorderConfig) -> StageSpec:
        # First in the plan, so last to stop (supervisor.stop goes sources first, in reverse plan order):
        # the sink's final events are drawn before the files close. Its SUB sockets connect, and ZeroMQ
        # connects before the other side binds. Essential: only cameras are non-essential sources, and a
        # recorder that cannot write its folder (a fatal exit) is a config error the run should not hide.
        args = [arg for endpoint in self.ends.previews.values() for arg in ("--preview", endpoint)]
        args += ["--events", self.ends.events, "--out", rec.out, "--format", rec.format]
        args += ["--max-wait", str(rec.max_wait_s)]
        if rec.blur_faces:
            args.append("--blur-faces")
        if rec.fps:
            args += ["--fps", str(rec.fps)]
        args, update = self.following(args, self.ends.previews)
        return self.spec("recorder", "sink.record", args, update=update, nice=self.nice.viewers)

    def viewer(self, view: ViewerConfig) -> StageSpec:
        # Like the recorder: SUB sockets only, so it may start first and stops last; essential, because a
        # viewer that cannot bind its port (a fatal exit) is a config error the run should not hide.
        args = [arg for endpoint in self.ends.previews.values() for arg in ("--preview", endpoint)]
        args += ["--events", self.ends.events, "--host", view.host, "--port", str(view.port)]
        args += ["--max-wait", str(view.max_wait_s)]
        if view.token:
            args += ["--token", view.token]
        if view.blur_faces:
            args.append("--blur-faces")
        args, update = self.following(args, self.ends.previews)
        return self.spec("viewer", "sink.viewer", args, update=update, nice=self.nice.viewers)

    def webrtc_ingest(self) -> StageSpec:
        # Binds every bridge (the captures connect) and the page; essential: a page that cannot bind its
        # port is a config error. Its browsers come and go; each capture reports its own camera up or down.
        ing = self.config.webrtc_ingest
        args = ["--host", ing.host, "--port", str(ing.port)]
        for camera, bridge in self.ends.bridges.items():
            args += ["--camera", f"{camera}={bridge}"]
        if ing.token:
            args += ["--token", ing.token]
        return self.spec("webrtc_ingest", "capture.webrtc_ingest", args, nice=self.nice.viewers)

    def sink(self) -> StageSpec:
        args = ["--pull", self.ends.events_in, *settings_cli.to_argv(self.config.sink, SinkSettings)]
        return self.spec("sink", "sink", args, nice=self.nice.sink)

    def classifier(self) -> StageSpec:
        threads = self.threads.classifier
        args = ["--pull", self.ends.faces, "--push", self.ends.events_in]
        settings = self.config.classifier.model_copy(update={"threads": threads, "control": self.ends.control})
        args += settings_cli.to_argv(settings, ClassifierSettings)
        return self.spec("classifier", "classifier", args, env=thread_env(threads), nice=self.nice.classifier)

    def detectors(self) -> list[StageSpec]:
        threads = self.threads.detector
        frames = [arg for endpoint in self.ends.frames.values() for arg in ("--frames", endpoint)]
        settings = settings_cli.to_argv(self.config.detector.model_copy(update={"threads": threads}), DetectorSettings)
        env = {**thread_env(threads), OPENCV_THREAD_ENV: str(threads)}
        specs = []
        for i in range(self.config.detector.workers):
            args, update = self.following(
                ["--worker", str(i), *frames, "--push", self.ends.faces, *settings], self.ends.frames
            )
            specs.append(
                self.spec(
                    f"detector-{i}",
                    "detector",
                    args,
                    env=env,
                    update=update,
                    nice=self.nice.detector,
                    cpus=self.threads.detector_cpus(i),
                )
            )
        return specs

    def capture(self, camera: CameraConfig) -> StageSpec:
        if camera.id in self.ends.bridges:
            camera = camera.model_copy(update={"source": f"webrtc:{self.ends.bridges[camera.id]}"})
        args = settings_cli.to_argv(camera, CameraSettings)
        args += ["--frames", self.ends.frames[camera.id], "--events", self.ends.events_in]
        if camera.id in self.ends.previews:
            args += ["--preview", self.ends.previews[camera.id]]
        if not self.config.network.shared_memory:
            args.append("--no-shared-memory")
        finite = camera.is_file and not camera.loop
        return self.spec(
            f"capture-{camera.id}",
            "capture",
            args,
            restart=Restart.ON_FAILURE if finite else Restart.ALWAYS,
            essential=False,
            labels={"camera": camera.id},
            nice=self.nice.capture,
            cpus=self.threads.capture_cpus(self.slots[camera.id], camera.decode_threads),
        )


def plan_stages(
    config: PipelineConfig, threads: ThreadSplit | None = None, layout: PortLayout | None = None
) -> list[StageSpec]:
    """Stages in start order: downstream first, so every socket a stage connects to is already bound.

    ``threads``: the split of the CPUs between the pools (None: :func:`thread_split` on this machine).
    ``layout``: the ports (None: :func:`port_layout` of the config).
    """
    build = _Stages(config, threads or thread_split(config), layout)
    stages: list[StageSpec] = []
    if config.recorder is not None:
        stages.append(build.recorder(config.recorder))
    if config.viewer is not None:
        stages.append(build.viewer(config.viewer))
    if build.ends.bridges:
        stages.append(build.webrtc_ingest())
    stages += [build.sink(), build.classifier(), *build.detectors()]
    stages += [build.capture(camera) for camera in config.cameras]
    return stages
