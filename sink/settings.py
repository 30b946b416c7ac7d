"""The sink's settings: the only copy of their defaults and meanings.

``python -m sink`` takes its options from :class:`SinkSettings` (``emostream.settings_cli``), and the
launcher config's ``sink`` section is :class:`SinkSettings` (``deploy.config.SinkConfig``).

``outputs`` is a list of :data:`OutputSettings`, one model per ``type`` (mqtt, redis, webhook, parquet);
what each does is in ``sink/outputs.py``.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emostream.endpoint import normalize_endpoint
from emostream.settings_cli import Cli

#: An output's ``name``: its metric label and its outbox file's name.
OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    """``"90s"``, ``"10m"``, ``"1h"``, ``"1d"`` in seconds; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30s, 10m, 1h or 1d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def _url(value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"{value!r} is not a {' or '.join(s + '://HOST' for s in schemes)} URL")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"{value!r} has a bad port") from None
    return value


def _template(value: str, what: str) -> str:
    """A topic or stream name with ``{camera}`` as its only placeholder."""
    try:
        value.format(camera="cam")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"{what} {value!r} may hold only the placeholder {{camera}}") from None
    if not value:
        raise ValueError(f"{what} is empty")
    return value


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    name: Annotated[
        str | None,
        Field(description="metric label and outbox file name; default: the type (give two outputs of one type names)"),
    ] = None
    batch: Annotated[int, Field(ge=1, le=10_000, description="most events handed to the output at once")] = 100
    retry_max_s: Annotated[
        float, Field(gt=0, le=3600, description="longest wait between retries (backoff doubles from 0.5 s)")
    ] = 30.0
    timeout_s: Annotated[float, Field(gt=0, le=600, description="a connection or acknowledgement slower fails")] = 10.0

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not OUTPUT_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a name: a letter or digit, then up to 63 of letters, digits, _ . -")
        return value

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "type"))  # noqa: B009 - every subclass has its Literal type


class _NetworkOutput(_Output):
    outbox_max_events: Annotated[
        int,
        Field(ge=1, le=100_000_000, description="events the on-disk outbox keeps while the output is down; "
              "beyond, the oldest are dropped (counted)"),
    ] = 100_000  # fmt: skip


class MqttOutput(_NetworkOutput):
    type: Literal["mqtt"]
    url: Annotated[str, Field(description="mqtt://[USER:PASSWORD@]HOST[:PORT] (port 1883 by default)")]
    topic: Annotated[str, Field(description="topic of each event; {camera} is the camera id")] = "emostream/{camera}"
    qos: Annotated[Literal[0, 1, 2], Field(description="1 or 2: delivered once the broker acknowledges")] = 1

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _url(value, ("mqtt",))

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        return _template(value, "topic")


class RedisOutput(_NetworkOutput):
    type: Literal["redis"]
    url: Annotated[str, Field(description="redis://[:PASSWORD@]HOST[:PORT][/DB] (or rediss://)")]
    stream: Annotated[str, Field(description="stream key of each event; {camera} is the camera id")] = (
        "emostream:{camera}"
    )
    maxlen: Annotated[
        int | None, Field(ge=1, description="trim each stream to about this many entries (XADD MAXLEN ~); none: never")
    ] = 100_000

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _url(value, ("redis", "rediss"))

    @field_validator("stream")
    @classmethod
    def _check_stream(cls, value: str) -> str:
        return _template(value, "stream")


class WebhookOutput(_NetworkOutput):
    type: Literal["webhook"]
    url: Annotated[str, Field(description='http(s)://... that receives POSTs of {"events": [...]}')]
    headers: Annotated[dict[str, str], Field(description="extra request headers, e.g. Authorization")] = {}
    linger_s: Annotated[
        float, Field(ge=0, le=60, description="wait this long for a full batch before posting a smaller one")
    ] = 1.0

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _url(value, ("http", "https"))


class ParquetOutput(_Output):
    type: Literal["parquet"]
    dir: Annotated[str, Field(description="folder of the Parquet files (created)")]
    rotate: Annotated[str, Field(description="start a new file every period: 30s, 10m, 1h, 1d")] = "1h"
    queue_max_events: Annotated[
        int,
        Field(ge=1, le=10_000_000, description="events waiting in memory for the writer; beyond, the oldest "
              "are dropped (counted)"),
    ] = 100_000  # fmt: skip

    @field_validator("rotate")
    @classmethod
    def _check_rotate(cls, value: str) -> str:
        if duration_seconds(value) < 1:
            raise ValueError(f"{value!r} is shorter than 1s (files are named by the second)")
        return value

    @property
    def rotate_s(self) -> float:
        return duration_seconds(self.rotate)


OutputSettings = Annotated[MqttOutput | RedisOutput | WebhookOutput | ParquetOutput, Field(discriminator="type")]
#: The ``type`` of each output model.
OUTPUT_TYPES = ("mqtt", "redis", "webhook", "parquet")


def parse_outputs(text: str) -> list[Any]:
    """``--outputs``: a JSON list of output objects (the same keys as the config's ``sink.outputs``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON: {exc.msg}") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON list of outputs")
    return value


def format_outputs(outputs: list[BaseModel]) -> str:
    return json.dumps([o.model_dump(exclude_defaults=True) | {"type": getattr(o, "type")} for o in outputs])  # noqa: B009


class SinkSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    publish: Annotated[
        str,
        Field(
            description="endpoint the public PUB socket binds: subscribers receive every event there "
            "(HOST:PORT means tcp://HOST:PORT)"
        ),
    ] = "tcp://127.0.0.1:5560"
    jsonl: Annotated[str | None, Field(description="append every event to this JSON Lines file")] = None
    outputs: Annotated[
        list[OutputSettings] | None,
        Field(description="also deliver every event to these outputs (mqtt, redis, webhook, parquet)"),
        Cli(metavar="JSON", parse=parse_outputs, format=format_outputs),
    ] = None
    outbox_dir: Annotated[
        str, Field(description="folder of the network outputs' on-disk outboxes, one file per output (created)")
    ] = "outbox"

    @field_validator("publish")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return normalize_endpoint(value)

    @field_validator("outputs")
    @classmethod
    def _unique_names(cls, outputs: list[Any] | None) -> list[Any] | None:
        seen: set[str] = set()
        for output in outputs or []:
            if output.label in seen:
                raise ValueError(f"two outputs are named {output.label!r}: give each output of one type a name")
            seen.add(output.label)
        return outputs
