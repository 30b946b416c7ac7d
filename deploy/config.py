"""The pipeline's YAML config: schema, defaults, validation with errors that name the key.

One file describes the whole pipeline; see ``deploy/demo.yaml`` (the embedded default) and
``deploy/examples/``. Unknown keys are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from capture.settings import CameraSettings
from classifier.settings import ClassifierSettings
from detector.settings import DetectorSettings
from emostream.security import SecurityError, load_keys
from sink.outputs import output_paths
from sink.service import output_file_problem
from sink.settings import OUTPUT_TYPES, SinkSettings

DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=1, le=65535)]


# The stage sections are the stages' own settings models (each field's default, limits and meaning live
# there, once); the config adds only what is about the pipeline, such as how many detector workers run.


class CameraConfig(CameraSettings):
    """One entry of ``cameras``: capture/settings.py."""


class DetectorConfig(DetectorSettings):
    """The ``detector`` section: detector/settings.py, plus how many workers to start."""

    workers: Annotated[int, Field(ge=1, le=64, description="detector worker processes")] = 1


class ClassifierConfig(ClassifierSettings):
    """The ``classifier`` section: classifier/settings.py."""


class SinkConfig(SinkSettings):
    """The ``sink`` section: sink/settings.py."""


class NetworkConfig(Section):
    """Internal endpoints, on ports from base_port on (the layout: deploy/plan.py, PortLayout)."""

    host: str = "127.0.0.1"
    base_port: Port = 5550
    #: Frames to detector workers on the same machine go through /dev/shm (emostream/shm.py); false:
    #: every frame over its socket.
    shared_memory: bool = True


class MetricsConfig(Section):
    """Every process's /metrics, on ports from base_port on (the layout: deploy/plan.py, PortLayout)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    base_port: Port = 9100


Nice = Annotated[int, Field(ge=0, le=19)]


class NiceConfig(Section):
    """Scheduling priority of each kind of stage: Unix nice values (0-19, added to the launcher's own).

    When the stages want more CPU than the machine has, the kernel gives a stage of nice N about 1.25^-N
    the share of one at 0. Downstream stages come first by default: work a detector already did is not
    thrown away in a classifier queue (``stale``), and an overload is shed where it is cheapest, as
    counted capture drops, instead of as queues that add latency to every event.
    """

    capture: Nice = 0
    detector: Nice = 5
    classifier: Nice = 0
    sink: Nice = 0
    #: The recorder, viewer and WebRTC page: what people watch comes after the events.
    viewers: Nice = 5


class SupervisorConfig(Section):
    restart_backoff_s: PositiveFloat = 0.5
    restart_backoff_max_s: PositiveFloat = 10.0
    stop_timeout_s: PositiveFloat = 5.0
    status_interval_s: Annotated[float, Field(ge=0)] = 5.0
    #: Kill and restart a stage whose /healthz has not answered 200 for this long; 0: never.
    hang_timeout_s: Annotated[float, Field(ge=0)] = 15.0
    #: Give a stage up when it dies again after this many restarts in a row, each run shorter than 30 s:
    #: the sink, classifier or a detector then ends the run with status 1, a camera stops being restarted.
    #: 0: restart forever.
    max_restarts: Annotated[int, Field(ge=0)] = 5
    nice: NiceConfig = NiceConfig()
    #: Pin each detector worker and each capture to its own CPU, round-robin over the launcher's CPUs (the
    #: classifier, sink and launcher stay free to run anywhere): a process that keeps its core keeps its
    #: caches. auto: pin when the CPUs are the launcher's own (its affinity mask sets the budget, not a
    #: cgroup quota) and the captures and workers are at least as many as those CPUs, so they contend for
    #: every one of them. docs/operations.md ("CPU pinning") says more, docs/benchmarks.md has the measurement.
    pin_cpus: bool | Literal["auto"] = "auto"


class SecurityConfig(Section):
    """CurveZMQ on every ZeroMQ socket of every stage (see emostream/security.py for the key layout)."""

    #: Folder written by ``python -m deploy keys --out DIR``; none: plain sockets (bound to 127.0.0.1 by default).
    curve_keys: str | None = None


class RecorderConfig(Section):
    """Annotated video per camera (``python -m sink.record``, see docs/video.md, "Recording annotated video").

    Absent: captures publish no previews and nothing is recorded.
    """

    #: Folder for ``<camera>-<start time>.avi`` files (created; relative to the launcher's cwd).
    out: str
    #: Pixelate every detected face before writing (faces the detector missed stay visible).
    blur_faces: bool = False
    #: Video frame rate; none: each camera's measured preview rate.
    fps: PositiveFloat | None = None
    format: Literal["avi", "mp4"] = "avi"
    #: How long a frame waits for its event before it is dropped (counted, reason no_event).
    max_wait_s: Annotated[float, Field(gt=0, le=60)] = 2.0


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ViewerConfig(Section):
    """The browser viewer (``python -m sink.viewer``, see docs/video.md, "Watching in a browser").

    Absent: no viewer. Present (even empty, ``viewer: {}``): every capture publishes previews.
    """

    #: Address the page binds; anything but a loopback address needs ``token``.
    host: str = "127.0.0.1"
    port: Port = 8080
    #: Access token: every request then needs ``?token=`` (or ``Authorization: Bearer``), else 401.
    token: str | None = None
    #: Pixelate every detected face in the video (faces the detector missed stay visible).
    blur_faces: bool = False
    #: How long a frame waits for its event before it is skipped.
    max_wait_s: Annotated[float, Field(gt=0, le=60)] = 1.0

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ViewerConfig:
        if not _is_loopback(self.host) and not self.token:
            raise ValueError(f"host {self.host!r} is not a loopback address: set viewer.token")
        return self


class WebRTCIngestConfig(Section):
    """The page browsers publish their webcams to (``python -m capture.webrtc_ingest``, docs/video.md,
    "Webcams from a browser"). Started when a camera has ``source: webrtc``; these defaults apply when absent."""

    #: Address the page binds; anything but a loopback address needs ``token``.
    host: str = "127.0.0.1"
    port: Port = 8090
    #: Access token: every request then needs ``?token=`` (or ``Authorization: Bearer``), else 401.
    token: str | None = None

    @model_validator(mode="after")
    def _token_off_loopback(self) -> WebRTCIngestConfig:
        if not _is_loopback(self.host) and not self.token:
            raise ValueError(f"host {self.host!r} is not a loopback address: set webrtc_ingest.token")
        return self


class ControlConfig(Section):
    """The launcher's HTTP control API (deploy/control.py, docs/operations.md, "Cameras at runtime"):
    list, add, update and remove cameras while the pipeline runs."""

    enabled: bool = True
    #: Address the API binds; anything but a loopback address needs ``token``.
    host: str = "127.0.0.1"
    port: Port = 8070
    #: Access token: every request then needs ``Authorization: Bearer`` (or ``?token=``), else 401.
    token: str | None = None

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ControlConfig:
        if self.enabled and not _is_loopback(self.host) and not self.token:
            raise ValueError(f"host {self.host!r} is not a loopback address: set control.token")
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class PipelineConfig(Section):
    cameras: list[CameraConfig] = Field(min_length=1)
    detector: DetectorConfig = DetectorConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    sink: SinkConfig = SinkConfig()
    network: NetworkConfig = NetworkConfig()
    metrics: MetricsConfig = MetricsConfig()
    supervisor: SupervisorConfig = SupervisorConfig()
    security: SecurityConfig = SecurityConfig()
    recorder: RecorderConfig | None = None
    viewer: ViewerConfig | None = None
    webrtc_ingest: WebRTCIngestConfig = WebRTCIngestConfig()
    control: ControlConfig = ControlConfig()

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        seen: set[str] = set()
        for camera in cameras:
            if camera.id in seen:
                raise ValueError(f"camera id {camera.id!r} is used twice")
            seen.add(camera.id)
        return cameras


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "tagged-union") or "[" in str(part):
            continue  # pydantic's internal validator names, not keys the user wrote
        elif i and isinstance(loc[i - 1], int) and part in OUTPUT_TYPES:
            continue  # the tag pydantic puts after a sink.outputs index: the type, not a key
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_config(data: Any, origin: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections (cameras, detector, ...)")
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = _key_path(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            elif err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                key, msg = f"{key}.type", f"must be one of {', '.join(OUTPUT_TYPES)}"
            lines.append(f"{origin}: {key}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    base = Path(origin).parent if origin != "config" else Path.cwd()

    def resolve(key: str, path: str) -> str:
        # Relative paths work from the current directory or from the config file's folder.
        for candidate in (Path(path), base / path):
            if candidate.exists():
                return str(candidate.resolve())
        raise ConfigError(f"{origin}: {key}: file {path!r} does not exist")

    for i, camera in enumerate(config.cameras):
        if camera.is_file:
            camera.source = resolve(f"cameras[{i}].source", str(camera.source))
    if config.detector.model:
        config.detector.model = resolve("detector.model", config.detector.model)
    if config.classifier.model:
        config.classifier.model = resolve("classifier.model", config.classifier.model)
    if config.security.curve_keys:
        keys = config.security.curve_keys
        folder = next((p for p in (Path(keys), base / keys) if p.is_dir()), None)
        if folder is None:
            raise ConfigError(f"{origin}: security.curve_keys: folder {keys!r} does not exist")
        try:
            load_keys(folder)  # every stage loads the same files: a missing one is a config error here
        except SecurityError as exc:
            raise ConfigError(f"{origin}: security.curve_keys: {exc}") from None
        config.security.curve_keys = str(folder.resolve())
    # The sink opens its file only once it runs: an unwritable path is found here, not in a restart loop.
    # Relative to the launcher's working directory, where the sink runs.
    if config.sink.jsonl and (problem := output_file_problem(config.sink.jsonl)):
        raise ConfigError(f"{origin}: sink.jsonl: {problem}")
    for key, path in output_paths(config.sink):  # outboxes and Parquet folders, the same way
        if problem := output_file_problem(path):
            raise ConfigError(f"{origin}: sink.{key}: {problem}")
    return config


def read_config_data(path: str | Path | None) -> tuple[Any, str]:
    """The YAML config as read, not validated, and its origin for :func:`parse_config` (``None``: the demo)."""
    path = Path(path) if path else DEMO_CONFIG
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text), str(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def load_config(path: str | Path | None) -> PipelineConfig:
    """Read and validate a YAML config; ``None`` means the embedded demo."""
    data, origin = read_config_data(path)
    return parse_config(data, origin)
