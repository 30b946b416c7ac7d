"""The sink's settings: the only copy of their defaults and meanings.

``python -m sink`` takes its options from :class:`SinkSettings` (``emostream.settings_cli``), and the
launcher config's ``sink`` section is :class:`SinkSettings` (``deploy.config.SinkConfig``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from emostream.endpoint import normalize_endpoint


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

    @field_validator("publish")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return normalize_endpoint(value)
