"""What every bench result shares: conversion to the JSON the bench writes, at the edge."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from emostream.jsonutil import json_ready


@dataclasses.dataclass(frozen=True)
class JsonResult:
    """A measurement as a frozen dataclass; :meth:`to_json` gives its JSON object, fields in order.

    Fields named in ``OPTIONAL`` are left out while None, so that a result keeps the keys the
    bench's JSON has always had (e.g. ``cpu_watch`` only once a :class:`CpuWatch` was attached).
    """

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = value.to_json() if isinstance(value, JsonResult) else json_ready(value)
        return out
